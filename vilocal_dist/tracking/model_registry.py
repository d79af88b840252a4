"""The trained detector as an MLflow model, registered as ``vilocal-detector``, and loaded back safely.

``log_detector`` logs the stage-2 network with ``mlflow.pytorch.log_model`` (MLflow 3 saves it in
the pickle-free ``pt2`` format, traced with torch.export from the input example), with a
signature (clip ``[B,3,5,H,W]`` → mask logits ``[B,1,H,W]``), an input example, and the vilocal
checkpoint itself as ``extra_files/model.pt``; the version is registered with the training
settings as tags (methods, model preset, τ, α, γ, size) and its validation metrics, and later
evaluations add theirs (``record_evaluation``).

``resolve_model`` turns ``models:/vilocal-detector/<version>`` or ``models:/vilocal-detector@<alias>``
into a local ``model.pt`` by downloading that one file; it is then read like any checkpoint, with
``torch.load(weights_only=True)``. Nothing from the store is unpickled or executed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.tracking.setup import tracking_uri

REGISTERED_MODEL = "vilocal-detector"
WEIGHTS_FILE = "model.pt"
_WEIGHTS_PATH = f"extra_files/{WEIGHTS_FILE}"
DESCRIPTION = ("ViLocal: localizes inpainted pixels in video (5-frame clip -> mask logits of the middle frame). "
               "Load the weights with `vilocal detect --model models:/vilocal-detector/<version>`.")
#: Training settings a registered version carries as tags (TrainConfig keys).
TRAINING_TAGS = ("model", "tau", "alpha", "gamma", "size_h", "size_w", "stage1_epochs", "stage2_epochs")


class MaskLogits(nn.Module):
    """ViLocal as one tensor in, one tensor out (what ``pt2`` export and MLflow serving take)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """clip: [B,3,5,H,W] in [0,1] -> forged-pixel logits [B,1,H,W]."""
        return self.model(clip)["pred_mask"]


def is_model_uri(ref: str | Path) -> bool:
    return str(ref).startswith("models:/")


def log_detector(run_id: str, model: nn.Module, checkpoint_file: Path, *, train_config: Mapping[str, Any],
                 methods: str, metrics: Mapping[str, float], uri: str | None = None) -> str:
    """Log ``model`` (a stage-2 ViLocal) into run ``run_id`` and register it; returns the version."""
    import mlflow
    from mlflow.models import infer_signature

    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    net = MaskLogits(model.cpu().eval())
    # Batch 2: torch.export would fix a batch of 1 into the traced graph.
    example = torch.rand(2, 3, 5, int(train_config["size_h"]), int(train_config["size_w"]),
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = net(example)
    client = mlflow.MlflowClient(tracking_uri=uri)
    with mlflow.start_run(run_id=run_id, nested=True):  # nested: a caller's run may be active
        info = mlflow.pytorch.log_model(
            net, name="detector", signature=infer_signature(example.numpy(), logits.numpy()),
            input_example=example.numpy(), extra_files=[str(checkpoint_file)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "vilocal_dist"],  # no slow inference
            metadata={"vilocal_checkpoint": _WEIGHTS_PATH},
        )
    # The run stays RUNNING: the caller ends it with the stage's own status.
    client.update_run(run_id, status="RUNNING")
    if not _exists(client):
        client.create_registered_model(REGISTERED_MODEL, description=DESCRIPTION)
    version = client.create_model_version(REGISTERED_MODEL, info.model_uri, run_id=run_id,
                                          tags={"vilocal.methods": methods, "vilocal.model_id": info.model_id})
    tags = {f"train.{k}": str(train_config[k]) for k in TRAINING_TAGS if k in train_config}
    tags.update({k: f"{v:.6g}" for k, v in metrics.items()})
    for key, value in tags.items():
        client.set_model_version_tag(REGISTERED_MODEL, version.version, key, value)
    return str(version.version)


def _exists(client: Any) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(REGISTERED_MODEL)
        return True
    except MlflowException:
        return False


def _parse(ref: str) -> tuple[str, str]:
    """``models:/name/3`` -> (name, "3"); ``models:/name@champion`` -> (name, "@champion")."""
    body = ref[len("models:/"):].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        if name and alias and "/" not in body:
            return name, "@" + alias
    elif body.count("/") == 1:
        name, version = body.split("/")
        if name and version.isdigit():
            return name, version
    raise ConfigError(f"--model {ref}: write models:/NAME/VERSION or models:/NAME@ALIAS "
                      f"(e.g. models:/{REGISTERED_MODEL}/1)")


def model_version(ref: str, uri: str | None = None) -> Any:
    """The registry's ModelVersion a ``models:/`` reference names (ConfigError if there is none)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name, which = _parse(ref)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(uri))
    try:
        if which.startswith("@"):
            return client.get_model_version_by_alias(name, which[1:])
        return client.get_model_version(name, which)
    except MlflowException as exc:
        raise ConfigError(f"--model {ref}: not in the model registry at {tracking_uri(uri)} "
                          f"({exc.message.splitlines()[0]})") from None


def resolve_model(ref: str | Path, uri: str | None = None) -> Path:
    """A local checkpoint path for ``ref``: a path as given, or a registry version's ``model.pt``
    downloaded (that file only) into a temp folder."""
    if not is_model_uri(ref):
        return Path(ref)
    import mlflow

    version = model_version(str(ref), uri)
    dst = Path(tempfile.mkdtemp(prefix="vilocal-model-"))
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}/{_WEIGHTS_PATH}", dst_path=str(dst),
            tracking_uri=tracking_uri(uri))
    except Exception as exc:  # noqa: BLE001 - missing file, unreachable store: one line naming the ref
        raise InputError(f"no {_WEIGHTS_PATH} in this model version ({type(exc).__name__})", ref) from None
    return Path(local)


def evaluation_metrics(scores: Mapping[str, Any], split: str) -> dict[str, float]:
    """``{split}/f1``, ``{split}/iou`` (pooled over frames), ``{split}/f1_per_video`` and the pooled
    scores per inpainting method (``{split}/<method>/f1``): the keys of every evaluation run."""
    out = {f"{split}/f1": scores["pooled"]["f1"], f"{split}/iou": scores["pooled"]["iou"],
           f"{split}/f1_per_video": scores["per_video"]["f1"]}
    for method, s in sorted(scores.get("by_method", {}).items()):
        out.update({f"{split}/{method}/f1": s["pooled"]["f1"], f"{split}/{method}/iou": s["pooled"]["iou"]})
    return {k: float(v) for k, v in out.items()}


def record_evaluation(model: str | Path, data: str | Path, scores: Mapping[str, Any], *, split: str,
                      run_id: str | None = None, experiment: str = "vilocal-evaluate", uri: str | None = None) -> str:
    """Record an evaluation: in run ``run_id``, or a new run of ``experiment`` (params, metrics);
    the dataset becomes the run's ``evaluation`` input, and a registered ``model`` gets the metrics
    as tags of its version. Returns the run id."""
    import mlflow

    from vilocal_dist.tracking.lineage import log_dataset_input
    from vilocal_dist.tracking.runs import provenance
    from vilocal_dist.tracking.setup import ensure_experiment

    uri = tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    metrics = evaluation_metrics(scores, split)
    created = run_id is None
    if created:
        tags = {**provenance(), "vilocal.model": str(model)}
        run_id = client.create_run(ensure_experiment(experiment, uri), tags=tags,
                                   run_name=f"evaluate-{Path(str(data)).name}-{split}").info.run_id
    status = "FAILED"
    try:
        if created:
            params = {"model": model, "data": data, "split": split}
            client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()],
                             metrics=[mlflow.entities.Metric(k, v, 0, 0) for k, v in metrics.items()])
        log_dataset_input(run_id, data, "evaluation", uri)
        if is_model_uri(model):
            version = model_version(str(model), uri)
            for key, value in metrics.items():
                client.set_model_version_tag(version.name, version.version, key, f"{value:.6g}")
        status = "FINISHED"
    finally:
        if created:
            client.set_terminated(run_id, status=status)
    return run_id
