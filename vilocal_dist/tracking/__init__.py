"""MLflow: where runs go, runs that always end (FINISHED or FAILED, never left RUNNING), and
logging that survives the tracking server going away (spooled locally, replayed later)."""

from vilocal_dist.tracking.runs import (
    flatten,
    log_figure,
    log_json,
    log_params_flat,
    mlflow_run,
    provenance,
)
from vilocal_dist.tracking.setup import ensure_experiment, storage_path, tracking_uri, ui_command
from vilocal_dist.tracking.spool import RunLog, spool_dir
from vilocal_dist.tracking.sync import sync

__all__ = [
    "ensure_experiment",
    "flatten",
    "log_figure",
    "log_json",
    "log_params_flat",
    "mlflow_run",
    "provenance",
    "RunLog",
    "spool_dir",
    "storage_path",
    "sync",
    "tracking_uri",
    "ui_command",
]
