"""MLflow runs that always end, with provenance, flat params and small artifact helpers."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from vilocal_dist import __version__
from vilocal_dist.paths import REPO_ROOT
from vilocal_dist.tracking.setup import ensure_experiment, tracking_uri

#: MLflow rejects longer param values; the full config is also logged as an artifact.
_MAX_PARAM_LEN = 500


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists/tuples become strings."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def git_commit() -> str:
    """Commit of this code: $VILOCAL_GIT_COMMIT (set in images without .git), else the checkout's."""
    if os.environ.get("VILOCAL_GIT_COMMIT"):
        return os.environ["VILOCAL_GIT_COMMIT"]
    if not (REPO_ROOT / ".git").exists():  # an installed package (the cluster image): no checkout
        return "unknown"
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance() -> dict[str, str]:
    """Package version, git commit and key library versions, for run tags and records."""
    import ray
    import torch

    return {
        "vilocal.version": __version__,
        "vilocal.git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "host": platform.node(),
    }


def flat_params(params: Mapping[str, Any]) -> dict[str, str]:
    """A (nested) dict as flat string params, values cut to MLflow's limit."""
    return {k: str(v)[:_MAX_PARAM_LEN] for k, v in flatten(params).items()}


def log_params_flat(params: Mapping[str, Any]) -> None:
    """Log a (nested) dict as flat params into the active run, values cut to MLflow's limit."""
    import mlflow

    items = list(flat_params(params).items())
    for i in range(0, len(items), 100):  # MLflow batches at most 100 params per call
        mlflow.log_params(dict(items[i : i + 100]))


def log_json(obj: Any, artifact_file: str) -> None:
    """Log ``obj`` as a JSON artifact of the active run."""
    import mlflow

    mlflow.log_text(json.dumps(obj, indent=2, sort_keys=True, default=str), artifact_file)


def log_figure(fig: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artifact and close it."""
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def log_file(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


@contextmanager
def mlflow_run(
    experiment: str,
    run_name: str,
    *,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    uri: str | None = None,
) -> Iterator[Any]:
    """Start (or resume, with ``run_id``) a run; it ends FINISHED, or FAILED/KILLED on error.

    ``params`` (nested dict) is logged flat and, in full, as ``config.json``.
    """
    import mlflow

    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    exp_id = ensure_experiment(experiment, uri)
    all_tags = {**provenance(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow.start_run(
        run_id=run_id, experiment_id=None if run_id else exp_id, run_name=None if run_id else run_name, tags=all_tags
    )
    status = "FAILED"
    try:
        if params and not run_id:
            log_params_flat(params)
            log_json(dict(params), "config.json")
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status=status)


def write_temp_json(obj: Any) -> Path:
    """A JSON file in a fresh temp dir (for artifact uploads that need a path)."""
    path = Path(tempfile.mkdtemp(prefix="vilocal-")) / "data.json"
    path.write_text(json.dumps(obj, indent=2, default=str))
    return path
