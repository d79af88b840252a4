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
``train`` with ``stage="both"`` starts stage 2 from stage 1's best checkpoint; ``stage="joint"``
trains encoder and decoder together with the focal loss only (the "w/o L_contra" ablation).

Fault tolerance: ``max_failures`` (FailureConfig) restarts the whole worker group when a worker
dies (a preempted node, an OOM kill); the new group resumes from the latest checkpoint Ray's
controller has registered (it polls reports every 2 s, so with real epoch lengths that is the
last epoch) and rank 0 tags the MLflow run ``vilocal.resumed_from``. Deterministic errors fail fast in the driver when possible
(bad data, a size the network cannot take) rather than burning retries.
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
from vilocal_dist.engines.config import DEFAULT_MAX_FAILURES, STAGES, TrainConfig
from vilocal_dist.engines.datasets import training_datasets
from vilocal_dist.engines.loop import EpochEnd, Runtime, fresh_model
from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.models import get_config
from vilocal_dist.tracking import log_json, mlflow_run, storage_path, tracking_uri
from vilocal_dist.tracking.train_logging import RUN_NAME_TAG, find_run, log_metrics, set_tag

log = logging.getLogger(__name__)

#: Checkpoint selection per stage: (metric, mode).
SELECTION = {1: (stage1.SELECTION_METRIC, stage1.SELECTION_MODE), 2: (stage2.SELECTION_METRIC, stage2.SELECTION_MODE)}
NUM_EXAMPLES = 3
#: Set by the workers when they continue from a checkpoint (rerun or worker-group restart).
RESUMED_TAG = "vilocal.resumed_from"


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
    latest = ray.train.get_checkpoint()  # set on a rerun, and after a worker-group restart
    if latest is not None:
        with latest.as_directory() as folder:
            resume = load_checkpoint(folder)
        if rank == 0:  # the run's record says it was restarted, and from where
            set_tag(config["mlflow_run_id"], RESUMED_TAG, f"epoch {resume['epoch']} at {time.strftime('%Y-%m-%dT%H:%M:%S')}",
                    uri=config["tracking_uri"])

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
        return
    if resume is not None:
        model = build_model(resume)
    elif config["joint"]:
        model = fresh_model(cfg)
    else:
        with config["encoder"].as_directory() as folder:
            model = build_model(load_checkpoint(folder))
    stage2.train_stage2(cfg, train_ds, val_ds, model=model, runtime=runtime, joint=config["joint"])


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
    joint: bool = False,
    max_failures: int = DEFAULT_MAX_FAILURES,
) -> StageOutcome:
    """Train one stage on ``workers`` Ray Train workers; resumes if ``run_name`` already exists.

    ``encoder`` (stage 2): the stage-1 checkpoint to start from (ray Checkpoint, folder or file).
    ``joint`` (stage 2 only): no encoder; a fresh model learns end to end with the focal loss.
    ``callbacks``: ``ray.train.UserCallback``s (e.g. Tune's ``TuneReportCallback`` in a sweep).
    ``max_failures``: worker-group restarts (from the latest checkpoint) before the run fails.
    """
    import mlflow
    import ray.train
    from ray.train.torch import TorchTrainer

    if stage not in SELECTION:
        raise ConfigError(f"stage must be 1 or 2, got {stage}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if max_failures < 0:
        raise ConfigError(f"max_failures must be >= 0, got {max_failures}")
    if joint and (stage != 2 or encoder is not None):
        raise ConfigError("joint training is a stage-2 run without an encoder checkpoint")
    data = Path(data).resolve()
    if stage == 2 and not joint:
        if encoder is None:
            raise ConfigError("stage 2 needs a stage-1 checkpoint (--encoder CKPT), or use --stage both")
        encoder = as_ray_checkpoint(encoder)
        encoder_ckpt = _read_checkpoint(encoder)
        if encoder_ckpt["stage"] != 1:
            log.warning("--encoder is a stage-%d checkpoint; its encoder is used as is", encoder_ckpt["stage"])
        if encoder_ckpt["model_name"] != cfg.model:
            log.info("stage 2 uses the encoder's model %s (config said %s)", encoder_ckpt["model_name"], cfg.model)
            cfg = cfg.replace(model=encoder_ckpt["model_name"])
    _check_size(cfg)
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
        "encoder": encoder.path if encoder is not None else "", "joint": joint, "max_failures": max_failures,
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
                "methods": list(methods) if methods else None, "encoder": encoder, "joint": joint,
                "mlflow_run_id": run_id, "tracking_uri": uri,
            },
            scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=ray.train.RunConfig(
                name=run_name,
                storage_path=storage_path(),
                callbacks=list(callbacks),
                failure_config=ray.train.FailureConfig(max_failures=max_failures),
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


def _check_size(cfg: TrainConfig) -> None:
    """Clip sizes the encoder cannot take fail here, once, instead of in every (retried) worker."""
    stride = get_config(cfg.model).space_stride
    if cfg.size_h % stride or cfg.size_w % stride:
        raise ConfigError(f"size_h and size_w must be divisible by {stride} for model {cfg.model!r}, "
                          f"got {cfg.size_h}x{cfg.size_w}")


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
    max_failures: int = DEFAULT_MAX_FAILURES,
) -> list[StageOutcome]:
    """``stage`` "1", "2", "both" (stage 2 from stage 1's best checkpoint) or "joint" (one
    focal-only run of encoder and decoder together, no contrastive stage).

    Ray run names are ``<run_name>-stage1`` / ``<run_name>-stage2`` (``<run_name>-joint``);
    rerunning resumes them.
    """
    if stage not in STAGES:
        raise ConfigError(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    common = dict(methods=methods, workers=workers, experiment=experiment, use_gpu=use_gpu, group=run_name,
                  max_failures=max_failures)
    if stage == "joint":
        return [train_stage(2, cfg, data, run_name=f"{run_name}-joint", joint=True, **common)]
    outcomes = []
    if stage in ("1", "both"):
        outcomes.append(train_stage(1, cfg, data, run_name=f"{run_name}-stage1", **common))
        encoder = outcomes[-1].ray_checkpoint
    if stage in ("2", "both"):
        outcomes.append(train_stage(2, cfg, data, run_name=f"{run_name}-stage2", encoder=encoder, **common))
    return outcomes
