"""Which forged data a run used: MLflow datasets with a content digest, linked both ways.

A forged dataset is an MLflow dataset (``mlflow.data`` ``MetaDataset``): its source is the
dataset folder's URI and its digest the first 32 hex digits of the manifest's sha256 (MLflow's
digest column holds 36 characters; the full sha256 is in the dataset's profile and in the
consumer's ``data.manifest_sha256`` param). The run that produced it (a forge, or an import) logs
it with context ``forge-output`` and the tag ``vilocal.dataset_uri``. A run that reads it (train,
evaluate) logs it with context ``training`` / ``evaluation`` and gets the tag
``vilocal.forge_run_id``; the producing run's tag ``vilocal.consumer_runs`` lists every run id
that used its output (comma-separated, newest last), so each side finds the other in the UI.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

from vilocal_dist import storage
from vilocal_dist.tracking.setup import tracking_uri

MANIFEST = "manifest.jsonl"
DATASET_URI_TAG = "vilocal.dataset_uri"
FORGE_RUN_TAG = "vilocal.forge_run_id"
CONSUMERS_TAG = "vilocal.consumer_runs"
OUTPUT_CONTEXT = "forge-output"
_MAX_TAG_LEN = 8000  # MLflow's limit on a tag value


def dataset_uri(root: str | Path) -> str:
    """The dataset folder as a URI (``file:///abs/path`` locally, unchanged for s3:// etc.)."""
    text = str(root)
    return text if "://" in text else Path(text).resolve().as_uri()


def manifest_sha256(root: str | Path) -> str:
    """sha256 of the dataset's manifest (what it holds, every video's hash included); "none" if absent."""
    path = storage.join(root, MANIFEST)  # a folder or a storage URI
    return hashlib.sha256(storage.read_bytes(path)).hexdigest() if storage.exists(path) else "none"


def _profile(root: str | Path) -> dict[str, Any]:
    path = storage.join(root, MANIFEST)  # a folder or a storage URI (a Path would mangle s3://)
    text = storage.read_bytes(path).decode() if storage.exists(path) else ""
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {
        "manifest_sha256": hashlib.sha256(text.encode()).hexdigest() if text else "none",
        "videos": len(records),
        "frames": sum(int(r.get("frames", 0)) for r in records),
        "by_split": dict(Counter(str(r.get("split")) for r in records)),
        "by_method": dict(Counter(str(r.get("method")) for r in records)),
    }


def forged_dataset(root: str | Path) -> Any:
    """The forged dataset at ``root`` as an MLflow dataset (name = folder name)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class ForgedVideos(MetaDataset):
        """A MetaDataset whose profile says what the manifest holds (videos, frames, splits, methods)."""

        @property
        def profile(self) -> Any:
            return _profile(root)

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    with warnings.catch_warnings():  # MLflow registers the local-file source twice and says so
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(dataset_uri(root))
    return ForgedVideos(source, name=Path(str(root)).name, digest=manifest_sha256(root)[:32])


def _log(client: Any, run_id: str, root: str | Path, context: str) -> str:
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    dataset = forged_dataset(root)
    entity = dataset._to_mlflow_entity()
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])])
    return entity.digest


def log_dataset_output(run_id: str, root: str | Path, uri: str | None = None) -> str:
    """Record that run ``run_id`` produced the dataset at ``root``; returns its digest."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri(uri))
    client.set_tag(run_id, DATASET_URI_TAG, dataset_uri(root))
    return _log(client, run_id, root, OUTPUT_CONTEXT)


def producer_run(root: str | Path, uri: str | None = None) -> str | None:
    """Id of the newest run that produced the dataset at ``root`` (any experiment), or None."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri(uri))
    experiments = [e.experiment_id for e in client.search_experiments()]
    value = dataset_uri(root).replace("'", "\\'")
    runs = client.search_runs(experiments, filter_string=f"tags.`{DATASET_URI_TAG}` = '{value}'",
                              order_by=["attributes.start_time DESC"], max_results=1) if experiments else []
    return runs[0].info.run_id if runs else None


def log_dataset_input(run_id: str, root: str | Path, context: str, uri: str | None = None) -> str:
    """Record that run ``run_id`` read the dataset at ``root`` (``context``: training, evaluation)
    and link it with the run that produced the data; returns the dataset digest."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri(uri))
    digest = _log(client, run_id, root, context)
    producer = producer_run(root, uri)
    if producer is not None and producer != run_id:
        client.set_tag(run_id, FORGE_RUN_TAG, producer)
        consumers = client.get_run(producer).data.tags.get(CONSUMERS_TAG, "")
        ids = [i for i in consumers.split(",") if i and i != run_id] + [run_id]
        while len(",".join(ids)) > _MAX_TAG_LEN:  # keep the newest when the list outgrows a tag
            ids.pop(0)
        client.set_tag(producer, CONSUMERS_TAG, ",".join(ids))
    return digest
