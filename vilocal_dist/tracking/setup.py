"""Where results go: the MLflow tracking URI and the Ray storage path.

On one machine both default to absolute paths under ``./runs`` (or ``$VILOCAL_HOME``): relative
SQLite URIs and artifact roots would resolve against each Ray worker's temporary working dir and
the data would be lost. On a cluster, ``MLFLOW_TRACKING_URI`` names the tracking server and
``VILOCAL_STORAGE`` the shared storage (s3://, gs://, NFS).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def home_dir() -> Path:
    """Root for local run outputs: ``$VILOCAL_HOME`` or ``./runs`` (absolute)."""
    return Path(os.environ.get("VILOCAL_HOME", "runs")).expanduser().resolve()


def tracking_uri(explicit: str | None = None) -> str:
    """``explicit`` > ``$MLFLOW_TRACKING_URI`` > absolute ``sqlite:///<home>/mlflow.db``.

    A relative ``sqlite:///x.db`` is made absolute against the current directory here, in the
    driver, so every Ray worker writes to the same file.
    """
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        home_dir().mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home_dir() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def storage_path(explicit: str | None = None) -> str:
    """Ray results/checkpoints: ``explicit`` > ``$VILOCAL_STORAGE`` > ``<home>/ray`` (absolute)."""
    value = explicit or os.environ.get("VILOCAL_STORAGE") or str(home_dir() / "ray")
    if "://" in value:
        return value
    path = Path(value).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _is_local_store(uri: str) -> bool:
    return urlparse(uri).scheme in ("sqlite", "file", "")


#: What each experiment holds: its description in the MLflow UI (the ``mlflow.note.content`` tag).
DESCRIPTIONS = {
    "vilocal-forge": "Forged datasets: a parent run per `vilocal forge` (the dataset is its output, see Datasets) "
                     "and a child run per (video, method). Tag vilocal.consumer_runs lists the runs that used it.",
    "vilocal-train": "ViLocal training: one run per stage (stage1 contrastive, stage2 focal, joint). Metrics "
                     "train/* and val/* per epoch, x-axis = samples seen; the stage-2 model is registered as "
                     "vilocal-detector. Group runs by tag vilocal.group to see both stages of one training.",
    "vilocal-evaluate": "Evaluations of a detector on a forged split: test/f1, test/iou pooled over frames, and per "
                        "inpainting method (test/<method>/f1). The dataset is the run's evaluation input.",
    "vilocal-demo": "`vilocal demo` summaries: the detection table, timings and links to the stage runs.",
    "vilocal-sweep-train": "Training sweeps (Optuna + ASHA): a parent run per sweep with the report plots; every "
                           "trial a child run with the same params and metric keys: compare them in the chart or "
                           "parallel-coordinates view.",
    "vilocal-sweep-inpaint": "Inpainting-regularizer sweeps: per video, Optuna over (lambda_a, lambda_s) scored by "
                             "self-validation; the parent holds the per-video best table and plots.",
    "vilocal-auto-lambda": "Per-video automatic choice of the inpainting regularizer weights (`inpaint --auto-lambda`).",
}
_DESCRIPTION_TAG = "mlflow.note.content"
#: Opens the MLflow 3 UI on its model-training views (runs, charts), not the GenAI ones.
_KIND_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(name: str, uri: str | None = None) -> str:
    """Id of experiment ``name`` (created if missing, with its description) in the store at ``uri``.

    For a local SQLite store the artifact root is set to an absolute folder beside the
    database; a tracking server chooses its own (``--artifacts-destination``).
    """
    import mlflow

    uri = tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if _is_local_store(uri) and uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        artifact_location = (db.parent / "artifacts" / name).resolve().as_uri()
    description = DESCRIPTIONS.get(name) or (
        f"Protocol experiment {name[len('vilocal-'):]!r} (`vilocal experiment`)" if name.startswith("vilocal-") else None)
    try:
        tags = {**_KIND_TAGS, **({_DESCRIPTION_TAG: description} if description else {})}
        return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
    except Exception:  # another process created it between our check and create
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def ui_command(uri: str | None = None) -> str:
    """The command that opens the MLflow UI on this store."""
    uri = tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser (tracking server)"
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port 5000"
