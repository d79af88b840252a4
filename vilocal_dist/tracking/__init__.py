"""MLflow: where runs go, and runs that always end (FINISHED or FAILED, never left RUNNING)."""

from vilocal_dist.tracking.runs import (
    flatten,
    log_figure,
    log_json,
    log_params_flat,
    mlflow_run,
    provenance,
)
from vilocal_dist.tracking.setup import ensure_experiment, storage_path, tracking_uri, ui_command

__all__ = [
    "ensure_experiment",
    "flatten",
    "log_figure",
    "log_json",
    "log_params_flat",
    "mlflow_run",
    "provenance",
    "storage_path",
    "tracking_uri",
    "ui_command",
]
