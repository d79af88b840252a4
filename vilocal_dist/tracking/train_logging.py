"""MLflow helpers for training runs: find a run by name tag, log metrics into a run by id.

Ray Train workers are separate processes without the driver's active run, so they log through
``MlflowClient`` with the run id the driver hands them (no ``start_run``, nothing left open).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from vilocal_dist.tracking.setup import ensure_experiment, tracking_uri

#: The tag that identifies a training run across restarts (its Ray Train run name).
RUN_NAME_TAG = "vilocal.run_name"


def find_run(experiment: str, run_name: str, uri: str | None = None) -> Any | None:
    """The newest run of ``experiment`` tagged ``vilocal.run_name = run_name`` (None if none)."""
    import mlflow

    uri = tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = ensure_experiment(experiment, uri)
    escaped = run_name.replace("'", "\\'")
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{escaped}'", order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int, uri: str | None = None) -> None:
    """Log ``metrics`` (finite numbers only) at ``step`` into run ``run_id``, in one batch."""
    import math

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(v), now, int(step)) for key, v in metrics.items() if math.isfinite(float(v))]
    if batch:
        mlflow.MlflowClient(tracking_uri=tracking_uri(uri)).log_batch(run_id, metrics=batch)


def set_tag(run_id: str, key: str, value: str, uri: str | None = None) -> None:
    """Set tag ``key`` on run ``run_id`` from any process (no active run needed)."""
    import mlflow

    mlflow.MlflowClient(tracking_uri=tracking_uri(uri)).set_tag(run_id, key, value)
