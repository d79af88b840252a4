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
trains encoder and decoder together with the focal loss only (the "w/o L_contra" ablation);
``stage="random"`` runs stage 2 alone on a never-trained encoder (the control).
``train(register=True)`` (the train command, the demo) registers the final stage-2 model as
``vilocal-detector`` (``tracking.model_registry``);
every stage run names its forged dataset as its ``training`` input (``tracking.lineage``). In the
driver, a progress bar counts the epochs (``distributed.progress``).

Fault tolerance: ``max_failures`` (FailureConfig) restarts the whole worker group when a worker
dies (a preempted node, an OOM kill); the new group resumes from the latest checkpoint Ray's
controller has registered (it polls reports every 2 s, so with real epoch lengths that is the
last epoch) and rank 0 tags the MLflow run ``vilocal.resumed_from``. Deterministic errors fail fast in the driver when possible
(bad data, a size the network cannot take) rather than burning retries.

The tracking server going away: every MLflow write after the run is opened goes through a
:class:`~vilocal_dist.tracking.spool.RunLog`. While the server is unreachable, training carries on,
one warning says so, and the records wait in ``<storage>/<run name>/mlflow-spool/<run id>.jsonl``
(replayed in order once the server answers again). After ``fit`` the driver keeps trying for
``tracking_retry_s`` (default 60 s, ``$VILOCAL_MLFLOW_RETRY_S``); if the server is still away it
says what the server lacks and how to deliver it (``vilocal tracking sync``, or a rerun under the
same name, which replays the spool first) and still returns the outcome: the checkpoints are in
Ray storage either way. The server must answer when a stage starts (nothing is trained otherwise).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from vilocal_dist import storage
from vilocal_dist.device import force_cpu, pick_device
from vilocal_dist.engines import stage1, stage2
from vilocal_dist.engines.checkpoint import CHECKPOINT_FILE, build_model, load_checkpoint, save_checkpoint
from vilocal_dist.engines.config import DEFAULT_MAX_FAILURES, TrainConfig, check_stage
from vilocal_dist.engines.datasets import training_datasets
from vilocal_dist.engines.loop import EpochEnd, Runtime, fresh_model
from vilocal_dist.console import phase
from vilocal_dist.distributed.progress import epoch_progress
from vilocal_dist.distributed.tuning import init_ray
from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.models import get_config
from vilocal_dist.tracking import storage_path, tracking_uri
from vilocal_dist.tracking.lineage import log_dataset_input, manifest_sha256
from vilocal_dist.tracking.model_registry import REGISTERED_MODEL, log_detector
from vilocal_dist.tracking.runs import flat_params
from vilocal_dist.tracking.spool import RunLog, bounded_http, call_with_retry, final_retry_s, is_transient, short_error, spool_dir
from vilocal_dist.tracking.sync import describe, sync
from vilocal_dist.tracking.train_logging import RUN_NAME_TAG, find_run, open_run

log = logging.getLogger(__name__)
T = TypeVar("T")

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
    mlflow_spool: str = ""  # records the tracking server has not got yet ("" when it has everything)
    registered_model: str = ""  # models:/vilocal-detector/<version> when registered


# ----------------------------------------------------------------------------- worker side


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker: datasets, (resume), the stage loop, per-epoch reports."""
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    stage, cfg = config["stage"], TrainConfig.from_dict(config["train_config"])
    # Only rank 0 writes to MLflow; an unreachable server spools instead of stopping training.
    runlog = RunLog(config["mlflow_run_id"], config["tracking_uri"], Path(config["mlflow_spool"])) if rank == 0 else None
    train_ds, val_ds, _ = training_datasets(config["data"], cfg, config["methods"])

    resume = None
    latest = ray.train.get_checkpoint()  # set on a rerun, and after a worker-group restart
    if latest is not None:
        with latest.as_directory() as folder:
            resume = load_checkpoint(folder)
        if runlog is not None:  # the run's record says it was restarted, and from where
            runlog.set_tags({RESUMED_TAG: f"epoch {resume['epoch']} at {time.strftime('%Y-%m-%dT%H:%M:%S')}"})

    def on_epoch_end(end: EpochEnd) -> None:
        metrics = {**end.metrics, "samples_seen": float(end.samples_seen)}
        if runlog is None:
            ray.train.report(metrics)  # every worker reports every epoch, or the barrier hangs
            return
        runlog.log_metrics(metrics, step=end.samples_seen)
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(end.checkpoint(), folder)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"epoch_{end.epoch:04d}")

    runtime = Runtime(device=pick_device(), resume=resume, on_epoch_end=on_epoch_end, progress=False)
    if stage == 1:
        stage1.train_stage1(cfg, train_ds, val_ds, runtime=runtime)
        return
    if resume is not None:
        model = build_model(resume)
    elif config["joint"] or config["random_encoder"]:
        model = fresh_model(cfg)
    else:
        with config["encoder"].as_directory() as folder:
            model = build_model(load_checkpoint(folder))
    stage2.train_stage2(cfg, train_ds, val_ds, model=model, runtime=runtime, joint=config["joint"])


# ----------------------------------------------------------------------------- driver side


def _ensure_ray() -> None:
    init_ray()  # RAY_ADDRESS (a cluster) when set, else a local one; no-op when Ray is up


def scaling(workers: int, use_gpu: bool | str, gpus_per_worker: float = 1.0) -> tuple[bool, Any]:
    """(use_gpu, ScalingConfig) for ``workers`` workers, checked against what the cluster can
    provide (GPU node types the autoscaler may start count): ``use_gpu`` True/False, or
    "auto"/"yes"/"no" as ``--use-gpu`` takes it. A group that can never be placed fails here."""
    import ray.train

    from vilocal_dist.distributed.resources import check_workers, cluster_capacity, resolve_use_gpu

    _ensure_ray()
    cap = cluster_capacity()
    if isinstance(use_gpu, str):
        use_gpu = resolve_use_gpu(use_gpu, cap)
    check_workers(workers, use_gpu, gpus_per_worker, cap)
    per_worker = {"CPU": 1, "GPU": gpus_per_worker} if use_gpu else None
    return use_gpu, ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=per_worker)


def fit_workers(requested: int, gpus_per_worker: float = 1.0) -> int:
    """``requested`` Train workers cut to what the cluster can provide with ``--use-gpu auto`` (a
    preset's 2 workers on a 1-GPU machine: 1 GPU worker, not a wait for a second GPU forever)."""
    from vilocal_dist.distributed.resources import cluster_capacity, default_workers

    _ensure_ray()
    cap = cluster_capacity()
    workers = default_workers(requested, cap.has_gpus, gpus_per_worker, cap)
    if workers != requested:
        log.warning("training on %d Ray Train worker(s) instead of %d: %s", workers, requested, cap.describe())
    return workers


def as_ray_checkpoint(path_or_ckpt: Any) -> Any:
    """A ray.train.Checkpoint from a Checkpoint, a checkpoint folder, or a model.pt path."""
    import ray.train

    if isinstance(path_or_ckpt, ray.train.Checkpoint):
        return path_or_ckpt
    if storage.is_remote(path_or_ckpt):  # under the storage root: Ray reads it through pyarrow
        return ray.train.Checkpoint(storage.normalize(path_or_ckpt).removesuffix(f"/{CHECKPOINT_FILE}"))
    path = Path(path_or_ckpt)
    folder = path.parent if path.is_file() else path
    if not (folder / CHECKPOINT_FILE).is_file():
        raise InputError(f"no {CHECKPOINT_FILE} here (give a stage-1 checkpoint folder or file)", path)
    return ray.train.Checkpoint.from_directory(str(folder.resolve()))


def _read_checkpoint(ckpt: Any) -> dict[str, Any]:
    with ckpt.as_directory() as folder:
        return load_checkpoint(folder)


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
    use_gpu: bool | str = "auto",
    gpus_per_worker: float = 1.0,
    group: str | None = None,
    callbacks: Sequence[Any] = (),
    joint: bool = False,
    random_encoder: bool = False,
    max_failures: int = DEFAULT_MAX_FAILURES,
    tracking_retry_s: float | None = None,
    register: bool = False,
) -> StageOutcome:
    """Train one stage on ``workers`` Ray Train workers; resumes if ``run_name`` already exists.

    ``encoder`` (stage 2): the stage-1 checkpoint to start from (ray Checkpoint, folder or file).
    ``joint`` (stage 2 only): no encoder; a fresh model learns end to end with the focal loss.
    ``random_encoder`` (stage 2 only): no encoder; stage 2 on a fresh model's never-trained encoder.
    ``use_gpu``: True/False or "auto" (GPUs when the cluster has or can start them), "yes", "no";
    ``gpus_per_worker``: GPUs each worker reserves when it uses GPUs (fractions share a GPU).
    ``callbacks``: ``ray.train.UserCallback``s (e.g. Tune's ``TuneReportCallback`` in a sweep).
    ``max_failures``: worker-group restarts (from the latest checkpoint) before the run fails.
    ``tracking_retry_s``: how long to wait for an unreachable MLflow server when the stage starts
    and after training (default ``$VILOCAL_MLFLOW_RETRY_S`` or 60 s); see the module docstring.
    ``register`` (stage 2): log the best model as an MLflow model and register it as ``vilocal-detector``.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    if stage not in SELECTION:
        raise ConfigError(f"stage must be 1 or 2, got {stage}")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    if max_failures < 0:
        raise ConfigError(f"max_failures must be >= 0, got {max_failures}")
    if joint and random_encoder:
        raise ConfigError("joint and random_encoder exclude each other (joint trains its random encoder)")
    if (joint or random_encoder) and (stage != 2 or encoder is not None):
        raise ConfigError("joint or random-encoder training is a stage-2 run without an encoder checkpoint")
    data = storage.normalize(data)  # a folder or a storage URI; workers read a node-local cached copy
    if stage == 2 and not (joint or random_encoder):
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
    registered = ""
    _, val_ds, summary = training_datasets(data, cfg, methods)  # fails fast, in the driver, on bad data
    use_gpu, scaling_config = scaling(workers, use_gpu, gpus_per_worker)
    metric, mode = SELECTION[stage]
    uri, retry_s = tracking_uri(), final_retry_s(tracking_retry_s)
    existing = _reach_server(lambda: find_run(experiment, run_name, uri), uri, retry_s)
    spool = spool_dir(run_name)
    if existing is not None:
        _replay_earlier(spool)  # what an earlier attempt could not deliver goes first
    params = {
        **cfg.to_dict(), "stage": stage, "workers": workers, "use_gpu": use_gpu,
        "gpus_per_worker": gpus_per_worker if use_gpu else 0, "data": str(data),
        "methods": ",".join(methods) if methods else "all", "data.manifest_sha256": manifest_sha256(data),
        "data.train_videos": len(summary["train_videos"]), "data.val_videos": len(summary["val_videos"]),
        "data.train_clips": summary["train_clips"], "data.val_clips": summary["val_clips"],
        "encoder": encoder.path if encoder is not None else "", "joint": joint, "random_encoder": random_encoder,
        "max_failures": max_failures,
        "selection": f"{metric} ({mode})",
    }
    tags = {RUN_NAME_TAG: run_name, "vilocal.stage": str(stage), "vilocal.group": group or run_name,
            "vilocal.storage": storage_path()}
    run_id = _reach_server(
        lambda: open_run(experiment, run_name, tags, run_id=existing.info.run_id if existing else None, uri=uri),
        uri, retry_s)
    runlog = RunLog(run_id, uri, spool / f"{run_id}.jsonl")
    if existing:
        runlog.set_tags({"vilocal.resumed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    else:  # a resumed run keeps its first params (MLflow refuses to change a param's value)
        runlog.log_params(flat_params(params))
        _record_input(run_id, data, uri)
    _log_json(runlog, {**params, "data_summary": summary}, "config.json")  # the resolved config, latest attempt
    epochs = cfg.stage1_epochs if stage == 1 else cfg.stage2_epochs + (cfg.stage1_epochs if joint else 0)
    label = "joint" if joint else "random encoder, stage 2" if random_encoder else f"stage {stage}"
    phase(f"{label}: {run_name}, {epochs} epochs on {workers} Ray Train worker(s), {summary['train_clips']} training "
          f"clips ({'resumed' if existing else 'new'} MLflow run {run_id})")
    init_ray()  # the bar's counter is an actor: a local Ray of our own if none is up (no-op otherwise)
    progress = epoch_progress(epochs, f"{label} epochs", shown=(metric,))
    try:
        with progress as progress_callbacks:
            trainer = TorchTrainer(
                _worker_loop,
                train_loop_config={
                    "stage": stage, "train_config": cfg.to_dict(), "data": str(data),
                    "methods": list(methods) if methods else None, "encoder": encoder, "joint": joint,
                    "random_encoder": random_encoder,
                    "mlflow_run_id": run_id, "tracking_uri": uri, "mlflow_spool": str(runlog.path),
                },
                scaling_config=scaling_config,
                # Logical GPUs on CPU nodes (tests): the device is the CPU, so NCCL cannot run.
                torch_config=TorchConfig(backend="gloo") if force_cpu() else None,
                run_config=ray.train.RunConfig(
                    name=run_name,
                    storage_path=storage_path(),
                    callbacks=[*callbacks, *progress_callbacks],
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
        runlog.log_metrics({f"best/{k}": v for k, v in best_ckpt["metrics"].items()}, step=0)
        with tempfile.TemporaryDirectory() as folder:
            _stage_model(best_ckpt, Path(folder))
            if stage == 2:
                _stage_examples(best_ckpt, val_ds, Path(folder))
            runlog.log_artifacts(folder)
            if register and stage == 2:
                registered = _register(runlog, best_ckpt, Path(folder) / "model" / CHECKPOINT_FILE, params["methods"])
        best_uri = storage.uri_of(best.filesystem, best.path)
        runlog.set_tags({"vilocal.best_checkpoint": best_uri})
    except BaseException as exc:
        _end_unfinished(runlog, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    runlog.set_status("FINISHED")
    delivered = runlog.flush(retry_s)  # the server may be back by now: wait for it a little
    if not delivered:
        _report_gap(runlog, run_name, best_uri, retry_s)
    return StageOutcome(stage, run_name, run_id, best_uri, best_ckpt["metrics"], existing is not None, best,
                        mlflow_spool="" if delivered else str(runlog.path), registered_model=registered)


def _register(runlog: RunLog, ckpt: dict[str, Any], checkpoint_file: Path, methods: str) -> str:
    """The best model as the next version of ``vilocal-detector`` (its ``models:/`` URI); "" when
    the tracking server is away (the checkpoint in Ray storage is the model then)."""
    try:
        best = {f"best/{k}": v for k, v in ckpt["metrics"].items() if "/" in k}  # train/*, val/*
        version = log_detector(runlog.run_id, build_model(ckpt), checkpoint_file, train_config=ckpt["train_config"],
                               methods=methods, metrics=best, uri=runlog.uri)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("MLflow: the model was not registered, the tracking server %s is away (%s)", runlog.uri,
                    short_error(exc))
        return ""
    uri = f"models:/{REGISTERED_MODEL}/{version}"
    runlog.set_tags({"vilocal.registered_model": uri})
    return uri


def _record_input(run_id: str, data: Path, uri: str) -> None:
    """The dataset as the run's ``training`` input; a server gone since ``open_run`` costs a warning, not the run."""
    try:
        with bounded_http():
            log_dataset_input(run_id, data, "training", uri)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("MLflow: the training dataset of run %s was not recorded (%s)", run_id, short_error(exc))


def _reach_server(fn: Callable[[], T], uri: str, within_s: float) -> T:
    """``fn()`` against the tracking server, retried for ``within_s``; a clear error if it never answers."""
    try:
        return call_with_retry(fn, within_s)
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise ConfigError(
            f"the MLflow tracking server {uri} did not answer within {within_s:.0f} s ({short_error(exc)}); "
            "nothing was trained. Start it (or point MLFLOW_TRACKING_URI at one that answers) and rerun"
        ) from exc


def _replay_earlier(spool: Path) -> None:
    for outcome in sync([spool]):
        if outcome.pending:
            log.warning("MLflow: %d records of an earlier attempt still wait in %s (%s); this attempt's "
                        "follow them", outcome.pending, outcome.spool, outcome.error)


def _end_unfinished(runlog: RunLog, status: str) -> None:
    """Mark the run FAILED/KILLED without waiting, and without hiding the error that ended it."""
    try:
        if not runlog.set_status(status):
            log.warning("MLflow: run %s is %s but the server is away; the status waits in %s",
                        runlog.run_id, status, runlog.path)
    except Exception as exc:  # noqa: BLE001 - the training error matters more than this one
        log.warning("MLflow: could not mark run %s %s: %s", runlog.run_id, status, short_error(exc))


def _report_gap(runlog: RunLog, run_name: str, checkpoint: str, waited_s: float) -> None:
    """One paragraph: training succeeded, what the server lacks, where it is kept, how to deliver it."""
    message = (
        f"MLflow: the tracking server {runlog.uri} did not take the last records of run {run_name!r} "
        f"(MLflow run {runlog.run_id}) within {waited_s:.0f} s ({runlog.last_error or 'unreachable'}). "
        f"Training itself succeeded and nothing is lost: the best checkpoint is {checkpoint} and the run's "
        f"checkpoints stay in Ray storage. Missing on the server: {describe(runlog.pending())}. They are kept "
        f"in {runlog.path}; deliver them with `vilocal tracking sync {runlog.path.parent}` once the server is "
        "up, or rerun with the same run name (it replays the spool before training)."
    )
    runlog.write_note(message)
    log.warning(message)


def _log_json(runlog: RunLog, obj: Any, name: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        runlog.log_artifacts(folder)


def _check_size(cfg: TrainConfig) -> None:
    """Clip sizes the encoder cannot take fail here, once, instead of in every (retried) worker."""
    stride = get_config(cfg.model).space_stride
    if cfg.size_h % stride or cfg.size_w % stride:
        raise ConfigError(f"size_h and size_w must be divisible by {stride} for model {cfg.model!r}, "
                          f"got {cfg.size_h}x{cfg.size_w}")


def _stage_model(ckpt: dict[str, Any], folder: Path) -> None:
    """The selected checkpoint as ``model/model.pt`` under ``folder`` (optimizer state dropped)."""
    save_checkpoint({**ckpt, "optim_state": None}, folder / "model")


def _stage_examples(ckpt: dict[str, Any], val_ds: Any, folder: Path) -> None:
    """A few frame | truth | prediction panels from the validation videos, as ``examples/*.png``."""
    import cv2
    import numpy as np

    from vilocal_dist.engines.evaluate import predict_probs
    from vilocal_dist.engines.overlay import side_by_side

    model = build_model(ckpt)
    threshold = float(ckpt["train_config"].get("threshold", 0.5))
    picks = np.linspace(0, len(val_ds) - 1, min(NUM_EXAMPLES, len(val_ds))).round().astype(int)
    (folder / "examples").mkdir(parents=True, exist_ok=True)
    for index in sorted(set(picks.tolist())):
        item = val_ds[index]
        prob = predict_probs(model, item["clip"][None])[0, 0].numpy()
        middle = item["clip"][:, item["clip"].shape[1] // 2]  # [3, H, W] middle frame
        frame = (middle.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        panel = side_by_side(frame, item["mask"][0].numpy() > 0.5, prob, threshold)
        path = folder / "examples" / f"{item['video']}_{item['frame']:05d}.png"
        if not cv2.imwrite(str(path), np.ascontiguousarray(panel[..., ::-1])):  # RGB -> OpenCV's BGR
            raise OSError(f"could not write {path}")


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
    use_gpu: bool | str = "auto",
    gpus_per_worker: float = 1.0,
    max_failures: int = DEFAULT_MAX_FAILURES,
    tracking_retry_s: float | None = None,
    register: bool = False,
) -> list[StageOutcome]:
    """``stage`` "1", "2", "both" (stage 2 from stage 1's best checkpoint), "joint" (one
    focal-only run of encoder and decoder together, no contrastive stage) or "random" (stage 2
    alone on a never-trained encoder).

    Ray run names are ``<run_name>-stage1`` / ``<run_name>-stage2`` (``<run_name>-joint``,
    ``<run_name>-random``);
    rerunning resumes them. ``tracking_retry_s``: see :func:`train_stage`. ``register``: the
    final stage-2 (or joint) model becomes the next version of ``vilocal-detector``.
    """
    check_stage(stage, cfg)
    common = dict(methods=methods, workers=workers, experiment=experiment, use_gpu=use_gpu,
                  gpus_per_worker=gpus_per_worker, group=run_name,
                  max_failures=max_failures, tracking_retry_s=tracking_retry_s)
    if stage == "joint":
        return [train_stage(2, cfg, data, run_name=f"{run_name}-joint", joint=True, register=register, **common)]
    if stage == "random":
        return [train_stage(2, cfg, data, run_name=f"{run_name}-random", random_encoder=True, register=register,
                            **common)]
    outcomes = []
    if stage in ("1", "both"):
        outcomes.append(train_stage(1, cfg, data, run_name=f"{run_name}-stage1", **common))
        encoder = outcomes[-1].ray_checkpoint
    if stage in ("2", "both"):
        outcomes.append(train_stage(2, cfg, data, run_name=f"{run_name}-stage2", encoder=encoder, register=register, **common))
    return outcomes
