"""Ray Train launcher for the two ViLocal stages (DDP over N workers, GPU or CPU/gloo).

The driver (``train_stage``) creates or, on a rerun, finds the stage's MLflow run (tag
``vilocal.run_name``), logs its params, and runs a ``TorchTrainer`` whose workers run the plain
stage loops of :mod:`vilocal_dist.engines`. Every worker calls ``ray.train.report`` once per
epoch; rank 0 attaches the checkpoint (one ``model.pt``) and logs the epoch's metrics to MLflow
with samples seen as the step. Rerunning with the same run name resumes: Ray Train restores the
run from ``storage_path()/<run name>`` and ``ray.train.get_checkpoint()`` hands the workers the
latest checkpoint, so the epoch counter and the MLflow run carry on.

After ``fit`` the driver picks the best checkpoint (stage 1: lowest ``val/loss``, the held-out
contrastive loss; stage 2: highest ``val/f1``), logs it as the run's model artifact (without
optimizer state) plus a few example panels (frame | truth | prediction), and returns it.
``train`` with ``stage="both"`` starts stage 2 from stage 1's best checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vilocal_dist.engines import stage1, stage2
from vilocal_dist.engines.checkpoint import CHECKPOINT_FILE, build_model, load_checkpoint, save_checkpoint
from vilocal_dist.engines.config import TrainConfig
from vilocal_dist.engines.datasets import training_datasets
from vilocal_dist.engines.loop import EpochEnd, Runtime
from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.tracking import log_json, mlflow_run, storage_path, tracking_uri
from vilocal_dist.tracking.train_logging import RUN_NAME_TAG, find_run, log_metrics

log = logging.getLogger(__name__)

#: Checkpoint selection per stage: (metric, mode).
SELECTION = {1: (stage1.SELECTION_METRIC, stage1.SELECTION_MODE), 2: (stage2.SELECTION_METRIC, stage2.SELECTION_MODE)}
NUM_EXAMPLES = 3
#: What ``train(stage=...)`` accepts.
STAGES = ("1", "2", "both")


@dataclass
class StageOutcome:
    """Where one stage's results went."""

    stage: int
    run_name: str  # Ray Train run name = folder under the storage path
    mlflow_run_id: str
    checkpoint: str  # best checkpoint folder (holds model.pt); a URI on remote storage
    best_metrics: dict[str, float]
    resumed: bool
    ray_checkpoint: Any = field(default=None, repr=False)  # the ray.train.Checkpoint itself


# ----------------------------------------------------------------------------- worker side


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker: datasets, (resume), the stage loop, per-epoch reports."""
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    stage, cfg = config["stage"], TrainConfig.from_dict(config["train_config"])
    train_ds, val_ds, _ = training_datasets(config["data"], cfg, config["methods"])

    resume = None
    latest = ray.train.get_checkpoint()  # set when this run name already has checkpoints
    if latest is not None:
        with latest.as_directory() as folder:
            resume = load_checkpoint(folder)

    def on_epoch_end(end: EpochEnd) -> None:
        metrics = {**end.metrics, "samples_seen": float(end.samples_seen)}
        if rank != 0:
            ray.train.report(metrics)  # every worker reports every epoch, or the barrier hangs
            return
        log_metrics(config["mlflow_run_id"], metrics, step=end.samples_seen, uri=config["tracking_uri"])
        print(f"[stage {stage}] epoch {end.epoch + 1}: "
              + ", ".join(f"{k}={v:.4g}" for k, v in end.metrics.items() if "/" in k), flush=True)
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(end.checkpoint(), folder)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"epoch_{end.epoch:04d}")

    runtime = Runtime(device=ray.train.torch.get_device(), resume=resume, on_epoch_end=on_epoch_end, progress=False)
    if stage == 1:
        stage1.train_stage1(cfg, train_ds, val_ds, runtime=runtime)
    else:
        if resume is not None:
            model = build_model(resume)
        else:
            with config["encoder"].as_directory() as folder:
                model = build_model(load_checkpoint(folder))
        stage2.train_stage2(cfg, train_ds, val_ds, model=model, runtime=runtime)


# ----------------------------------------------------------------------------- driver side


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS (a cluster) when set, else a local one


def cluster_has_gpus() -> bool:
    """Whether the connected Ray cluster offers any GPU (decides use_gpu and the backend)."""
    import ray

    _ensure_ray()
    return ray.cluster_resources().get("GPU", 0) > 0


def as_ray_checkpoint(path_or_ckpt: Any) -> Any:
    """A ray.train.Checkpoint from a Checkpoint, a checkpoint folder, or a model.pt path."""
    import ray.train

    if isinstance(path_or_ckpt, ray.train.Checkpoint):
        return path_or_ckpt
    path = Path(path_or_ckpt)
    folder = path.parent if path.is_file() else path
    if not (folder / CHECKPOINT_FILE).is_file():
        raise InputError(f"no {CHECKPOINT_FILE} here (give a stage-1 checkpoint folder or file)", path)
    return ray.train.Checkpoint.from_directory(str(folder.resolve()))


def _read_checkpoint(ckpt: Any) -> dict[str, Any]:
    with ckpt.as_directory() as folder:
        return load_checkpoint(folder)


def _manifest_sha256(data: Path) -> str:
    path = data / "manifest.jsonl"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "none"


def train_stage(
    stage: int,
    cfg: TrainConfig,
    data: str | Path,
    *,
    run_name: str,
    methods: Sequence[str] | None = None,
    workers: int = 1,
    encoder: Any = None,
    experiment: str = "vilocal-train",
    use_gpu: bool | None = None,
    group: str | None = None,
    callbacks: Sequence[Any] = (),
) -> StageOutcome:
    """Train one stage on ``workers`` Ray Train workers; resumes if ``run_name`` already exists.

    ``encoder`` (stage 2): the stage-1 checkpoint to start from (ray Checkpoint, folder or file).
    ``callbacks``: ``ray.train.UserCallback``s (e.g. Tune's ``TuneReportCallback`` in a sweep).
    """
    import mlflow
    import ray.train
    from ray.train.torch import TorchTrainer

    if stage not in SELECTION:
        raise ConfigError(f"stage must be 1 or 2, got {stage}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    data = Path(data).resolve()
    if stage == 2:
        if encoder is None:
            raise ConfigError("stage 2 needs a stage-1 checkpoint (--encoder CKPT), or use --stage both")
        encoder = as_ray_checkpoint(encoder)
        encoder_ckpt = _read_checkpoint(encoder)
        if encoder_ckpt["stage"] != 1:
            log.warning("--encoder is a stage-%d checkpoint; its encoder is used as is", encoder_ckpt["stage"])
        if encoder_ckpt["model_name"] != cfg.model:
            log.info("stage 2 uses the encoder's model %s (config said %s)", encoder_ckpt["model_name"], cfg.model)
            cfg = cfg.replace(model=encoder_ckpt["model_name"])
    _, val_ds, summary = training_datasets(data, cfg, methods)  # fails fast, in the driver, on bad data
    use_gpu = cluster_has_gpus() if use_gpu is None else use_gpu
    metric, mode = SELECTION[stage]
    uri = tracking_uri()
    existing = find_run(experiment, run_name, uri)
    params = {
        **cfg.to_dict(), "stage": stage, "workers": workers, "use_gpu": use_gpu, "data": str(data),
        "methods": ",".join(methods) if methods else "all", "data.manifest_sha256": _manifest_sha256(data),
        "data.train_videos": len(summary["train_videos"]), "data.val_videos": len(summary["val_videos"]),
        "data.train_clips": summary["train_clips"], "data.val_clips": summary["val_clips"],
        "encoder": encoder.path if encoder is not None else "",
        "selection": f"{metric} ({mode})",
    }
    tags = {RUN_NAME_TAG: run_name, "vilocal.stage": str(stage), "vilocal.group": group or run_name,
            "vilocal.storage": storage_path()}
    with mlflow_run(experiment, run_name, params=params, tags=tags,
                    run_id=existing.info.run_id if existing else None, uri=uri) as run:
        run_id = run.info.run_id
        if existing:
            mlflow.set_tag("vilocal.resumed_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
        log_json({**params, "data_summary": summary}, "config.json")  # the resolved config, latest attempt
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={
                "stage": stage, "train_config": cfg.to_dict(), "data": str(data),
                "methods": list(methods) if methods else None, "encoder": encoder,
                "mlflow_run_id": run_id, "tracking_uri": uri,
            },
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=ray.train.RunConfig(
                name=run_name,
                storage_path=storage_path(),
                callbacks=list(callbacks),
                # Keep the best and the latest checkpoint (Ray never deletes the latest: resume needs it).
                checkpoint_config=ray.train.CheckpointConfig(
                    num_to_keep=2, checkpoint_score_attribute=metric, checkpoint_score_order=mode
                ),
            ),
        )
        result = trainer.fit()  # raises TrainingFailedError if a worker failed: the run ends FAILED
        best = result.get_best_checkpoint(metric, mode)
        best_ckpt = _read_checkpoint(best)
        mlflow.log_metrics({f"best/{k}": v for k, v in best_ckpt["metrics"].items()})
        _log_model(best_ckpt)
        if stage == 2:
            _log_examples(best_ckpt, val_ds)
        mlflow.set_tag("vilocal.best_checkpoint", best.path)
    return StageOutcome(stage, run_name, run_id, best.path, best_ckpt["metrics"], existing is not None, best)


def _log_model(ckpt: dict[str, Any]) -> None:
    """The selected checkpoint as the run's ``model/model.pt`` (optimizer state dropped)."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        path = save_checkpoint({**ckpt, "optim_state": None}, folder)
        mlflow.log_artifact(str(path), artifact_path="model")


def _log_examples(ckpt: dict[str, Any], val_ds: Any) -> None:
    """A few frame | truth | prediction panels from the validation videos, as PNG artifacts."""
    import mlflow
    import numpy as np

    from vilocal_dist.engines.evaluate import predict_probs
    from vilocal_dist.engines.overlay import side_by_side

    model = build_model(ckpt)
    threshold = float(ckpt["train_config"].get("threshold", 0.5))
    picks = np.linspace(0, len(val_ds) - 1, min(NUM_EXAMPLES, len(val_ds))).round().astype(int)
    for index in sorted(set(picks.tolist())):
        item = val_ds[index]
        prob = predict_probs(model, item["clip"][None])[0, 0].numpy()
        middle = item["clip"][:, item["clip"].shape[1] // 2]  # [3, H, W] middle frame
        frame = (middle.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        panel = side_by_side(frame, item["mask"][0].numpy() > 0.5, prob, threshold)
        mlflow.log_image(panel, artifact_file=f"examples/{item['video']}_{item['frame']:05d}.png")


def train(
    stage: str,
    cfg: TrainConfig,
    data: str | Path,
    *,
    run_name: str,
    methods: Sequence[str] | None = None,
    workers: int = 1,
    encoder: Any = None,
    experiment: str = "vilocal-train",
    use_gpu: bool | None = None,
) -> list[StageOutcome]:
    """``stage`` "1", "2" or "both" (stage 2 from stage 1's best checkpoint).

    Ray run names are ``<run_name>-stage1`` / ``<run_name>-stage2``; rerunning resumes both.
    """
    if stage not in STAGES:
        raise ConfigError(f"--stage must be 1, 2 or both, got {stage!r}")
    common = dict(methods=methods, workers=workers, experiment=experiment, use_gpu=use_gpu, group=run_name)
    outcomes = []
    if stage in ("1", "both"):
        outcomes.append(train_stage(1, cfg, data, run_name=f"{run_name}-stage1", **common))
        encoder = outcomes[-1].ray_checkpoint
    if stage in ("2", "both"):
        outcomes.append(train_stage(2, cfg, data, run_name=f"{run_name}-stage2", encoder=encoder, **common))
    return outcomes
