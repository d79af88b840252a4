"""MLflow helpers for training runs: find a run by name tag, create or reopen it by id.

Ray Train workers are separate processes without the driver's active run, and the tracking
server may go away mid-run, so training logs through ``MlflowClient`` with a run id (no
``start_run``, nothing left open in any process) via :class:`~vilocal_dist.tracking.spool.RunLog`.
"""

from __future__ import annotations

from typing import Any, Mapping

from vilocal_dist.tracking.runs import provenance
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


def open_run(experiment: str, run_name: str, tags: Mapping[str, str], *, run_id: str | None = None,
             uri: str | None = None) -> str:
    """Create run ``run_name`` with provenance, MLflow's context tags (user, source) and ``tags``,
    or, given ``run_id``, reopen that run as RUNNING with the tags refreshed. Returns the run id.

    Params are the caller's (``RunLog.log_params``): a resumed run keeps its first ones.
    """
    import mlflow
    from mlflow.entities import RunTag
    from mlflow.tracking.context.registry import resolve_tags

    uri = tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    all_tags = resolve_tags({**provenance(), **tags})
    if run_id is None:
        return client.create_run(ensure_experiment(experiment, uri), run_name=run_name, tags=all_tags).info.run_id
    client.update_run(run_id, status="RUNNING")
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
    return run_id
