"""Hyperparameter sweeps from YAML specs: Optuna TPE (seeded) + optional ASHA, logged to MLflow.

Per kind (see ``spec.KINDS``):

* ``vilocal-contrastive`` — a trial trains stage 1 (contrastive, its τ) then stage 2 on that
  encoder; it reports ``val/f1`` once per stage-2 epoch (ASHA acts on stage-2 epochs: set
  ``max_t`` to ``stage2_epochs``) with stage 1's best metrics attached as ``stage1/*``.
* ``vilocal-focal`` — one stage-1 encoder, trained once before the Tuner (or ``data.encoder``),
  shared by every trial; a trial trains stage 2 with its α, γ.
* ``inpaint-regularizers`` — per video, one Tuner over the method's weights (λ_a, λ_s), scored by
  ``selfval/psnr``; composed videos also log the true hole PSNR beside it.

A training trial is a driver function (1 CPU) that fits Ray Train ``TorchTrainer``s through
``distributed.train.train_stage``, with ``TuneReportCallback`` forwarding the workers' reports to
Tune. Its Train workers take their own resources outside the trial (Ray Train's defaults: 1 CPU,
and 1 GPU on a GPU cluster, per worker), so the concurrency cap is sized for both:
``floor(CPUs / (1 + workers))`` trials at once (and ``floor(GPUs / workers)``), or drivers would
hold every CPU while their workers wait forever. Train runs are named
``<sweep>-<trial id>-stage<N>`` (no timestamps), so a restored trial resumes its Train run.

MLflow: the spec's experiment (one per sweep family), a parent run per sweep (reopened on
``--resume``) holding the spec, ``best_config.json``, ``results.csv``/``.md`` and plots; a child
run per trial from the driver-side ``MLflowTrialLogger``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.optuna import OptunaSearch

from vilocal_dist.distributed.spec import SweepSpec, load_specs, parse_size
from vilocal_dist.distributed.tune_mlflow import MLflowTrialLogger, close_open_children
from vilocal_dist.distributed.tuning import (
    SessionBudget,
    adopt_env,
    can_resume,
    driver_env,
    experiment_path,
    is_complete,
    parent_run,
    result_rows,
    set_session_budget,
)
from vilocal_dist.errors import ConfigError
from vilocal_dist.tracking.sweep_report import best_row, write_report

TRAIN_EXPERIMENT = "vilocal-train"  # where train_stage records each stage's own run


@dataclass
class SweepOutcome:
    name: str
    path: str
    parent_run_id: str
    metric: str
    params: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    complete: bool = True  # False when interrupted: --resume continues


def tune_space(spec: SweepSpec) -> dict[str, Any]:
    """The spec's search space as Tune distributions (OptunaSearch converts them)."""
    space: dict[str, Any] = {}
    for p in spec.search_space:
        if p.type == "loguniform":
            space[p.name] = tune.loguniform(p.low, p.high)
        elif p.type == "uniform":
            space[p.name] = tune.uniform(p.low, p.high)
        elif p.type == "quniform":
            space[p.name] = tune.quniform(p.low, p.high, p.q)
        else:
            space[p.name] = tune.choice(list(p.values))
    return space


def scheduler_for(spec: SweepSpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    if s.type != "asha":
        return None
    # stop_last_trials=False: a trial reaching max_t finishes on its own, so its Train run still
    # selects and logs its best checkpoint instead of being killed at its last report.
    return ASHAScheduler(
        time_attr="training_iteration", grace_period=s.grace_period, reduction_factor=s.reduction_factor,
        max_t=s.max_t, stop_last_trials=False,
    )


def _params_of(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict(config["params"]) | ({"video": config["video"]} if "video" in config else {})


def _run_name(trial: Any) -> str:
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config["params"].items())
    return f"{trial.config.get('video', 'trial')} {trial.trial_id} ({params})"


# --- training kinds -------------------------------------------------------------------------------


class StageTwoReport(TuneReportCallback):
    """Forwards a Train run's reports to Tune with fixed extra metrics (stage 1's best) attached."""

    def __init__(self, extra: Mapping[str, float]) -> None:
        super().__init__()
        self.extra = dict(extra)

    def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
        super().after_report(run_context, [{**self.extra, **metrics[0]}], checkpoint)


def train_concurrency(workers: int) -> int:
    """Training trials that fit at once: each holds 1 CPU for its driver plus, per Train worker,
    1 CPU and (on a cluster that has or can start GPUs) 1 GPU, as train_stage gives them."""
    from vilocal_dist.distributed.resources import cluster_capacity

    cap = cluster_capacity()
    fits = [math.floor(cap.max_cpus / (1 + workers))]
    if cap.has_gpus:
        fits.append(math.floor(cap.max_gpus / workers))
    return max(1, min(fits))


def train_trial(
    config: dict[str, Any], *, kind: str, base: dict[str, Any], data: str, encoder: str | None, workers: int, sweep: str,
    env: dict[str, str],
) -> None:
    """Tune trainable (a 1-CPU driver): stage 1 (contrastive kind) then stage 2 on Ray Train.

    Only stage 2 reports to Tune (each epoch's ``val/f1``), so every result the searcher and ASHA
    see carries the metric; stage 1's best metrics ride along as ``stage1/*``.
    """
    from vilocal_dist.distributed.train import train_stage
    from vilocal_dist.engines.config import TrainConfig

    adopt_env(env)  # train_stage records to the driver's MLflow store and Ray storage
    cfg = TrainConfig.from_dict({**base, **config["params"]})
    run = f"{sweep}-{tune.get_context().get_trial_id()}"
    extra: dict[str, float] = {}
    if kind == "vilocal-contrastive":
        first = train_stage(1, cfg, data, run_name=f"{run}-stage1", workers=workers, experiment=TRAIN_EXPERIMENT)
        encoder_ckpt: Any = first.ray_checkpoint
        extra = {f"stage1/{k}": v for k, v in first.best_metrics.items() if isinstance(v, (int, float))}
    else:
        encoder_ckpt = encoder
    train_stage(
        2, cfg, data, run_name=f"{run}-stage2", workers=workers, encoder=encoder_ckpt,
        experiment=TRAIN_EXPERIMENT, callbacks=[StageTwoReport(extra)],
    )  # fmt: skip


def _train_data(spec: SweepSpec) -> str:
    """The forged dataset root; built first (idempotently) when the spec has ``data.forge``."""
    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs
    from vilocal_dist.tracking.setup import home_dir

    root = str((home_dir() / Path(spec.data["root"]).expanduser()).resolve())  # relative: under $VILOCAL_HOME
    f = spec.data.get("forge")
    if f:
        size = parse_size(f.get("size", "240x432"), spec.path, "data.forge.size")
        videos = expand_sources([], composed=int(f.get("composed", 4)), frames=int(f.get("frames", 12)), size=size, seed=int(f.get("seed", 0)))
        jobs = plan_jobs(videos, list(f.get("methods", ["telea"])), test_fraction=float(f.get("test_fraction", 0.25)), seed=int(f.get("seed", 0)))
        summary = forge(jobs, ForgeOptions(out=root, seed=int(f.get("seed", 0)), retries=1))
        if summary.failed:
            raise RuntimeError(f"forging the sweep's data failed for {summary.failed}")
    return root


def _shared_encoder(spec: SweepSpec, data: str) -> str:
    """Focal sweeps: the stage-1 encoder every trial reuses (trained here once, resumable)."""
    from vilocal_dist.distributed.train import train_stage
    from vilocal_dist.engines.config import TrainConfig

    if spec.data.get("encoder"):
        return str(Path(spec.data["encoder"]).expanduser().resolve())
    cfg = TrainConfig.from_dict(dict(spec.base))
    outcome = train_stage(1, cfg, data, run_name=f"{spec.name}-encoder", workers=spec.resources.workers_per_trial, experiment=TRAIN_EXPERIMENT)
    return outcome.checkpoint


def _close_train_runs(rows: list[dict[str, Any]], sweep: str) -> None:
    """Stage runs of trials that ASHA (or a failure) ended mid-stage: their driver was killed
    before its MLflow run could end, so end them here (KILLED)."""
    import mlflow

    from vilocal_dist.tracking.setup import tracking_uri
    from vilocal_dist.tracking.train_logging import find_run

    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    for row in rows:
        for stage in (1, 2):
            run = find_run(TRAIN_EXPERIMENT, f"{sweep}-{row['trial_id']}-stage{stage}")
            if run is not None and run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="KILLED")


def _prepare_train(spec: SweepSpec) -> tuple[str, str | None]:
    """(dataset root, shared encoder or None), built before the sweep's parent run opens: the
    forge and the encoder's training record MLflow runs of their own."""
    data = _train_data(spec)
    return data, (_shared_encoder(spec, data) if spec.kind == "vilocal-focal" else None)


def _fit_train(spec: SweepSpec, path: str, resume: bool, callbacks: list, data: str, encoder: str | None) -> tuple[Any, bool]:
    r = spec.resources
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, kind=spec.kind, base=dict(spec.base), data=data, encoder=encoder,
                             workers=r.workers_per_trial, sweep=spec.name, env=driver_env()),  # fmt: skip
        {"cpu": 1},  # the trial's driver; its Train workers ask for their own resources
    )
    if resume:
        results = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True).fit()
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"params": tune_space(spec)},
            tune_config=tune.TuneConfig(
                metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
                search_alg=OptunaSearch(seed=spec.seed), scheduler=scheduler_for(spec),
                max_concurrent_trials=r.max_concurrent or train_concurrency(r.workers_per_trial),
            ),  # fmt: skip
            run_config=tune.RunConfig(name=spec.name, storage_path=path.rsplit("/", 1)[0], callbacks=callbacks),
        )
        results = tuner.fit()
    return results, is_complete(results, spec.num_samples)


# --- inpainting kind ------------------------------------------------------------------------------


def _inpaint_videos(spec: SweepSpec) -> list[tuple[str, str]]:
    from vilocal_dist.distributed.forge import expand_sources

    d = spec.data
    size = parse_size(d.get("size", "240x432"), spec.path, "data.size")
    return expand_sources(list(d.get("sources", [])), composed=int(d.get("composed", 0)), frames=int(d.get("frames", 24)), size=size, seed=int(d.get("seed", 0)))


def _load(spec_str: str, size: tuple[int, int] | None, max_frames: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Frames, masks and (when the source has them, e.g. composed videos) clean backgrounds."""
    from vilocal_dist.data.sources import load_video, open_source

    src = open_source(spec_str)
    frames, masks = load_video(src, size=size, max_frames=max_frames)
    gt = None
    if src.has_backgrounds:
        gt = np.stack([b for _, b in zip(range(len(frames)), src.iter_backgrounds(size))])
    return frames, masks, gt


def _fit_inpaint(spec: SweepSpec, callbacks: list) -> tuple[list[tuple[str, Any]], bool]:
    """One Tuner per video (its own seeded Optuna study) at ``<storage>/<sweep>/<video>``; each
    resumes by itself when its folder exists."""
    from vilocal_dist.distributed.auto_lambda import video_sweep

    base = dict(spec.base)
    method = base.pop("method", "iivi")
    size = parse_size(spec.data["size"], spec.path, "data.size") if spec.data.get("sources") and spec.data.get("size") else None
    max_frames = spec.data.get("max_frames")
    r = spec.resources
    out = []
    for video, source in _inpaint_videos(spec):
        frames, masks, gt = _load(source, size, max_frames)
        results = video_sweep(
            frames, masks, params=tune_space(spec), name=f"{spec.name}/{video}", method=method, base_cfg=base,
            gt_frames=gt, num_samples=spec.num_samples, search_alg=OptunaSearch(seed=spec.seed), metric=spec.metric,
            mode=spec.mode, seed=spec.seed, cpus_per_trial=r.cpus_per_trial, gpus_per_trial=r.gpus_per_trial,
            max_concurrent=r.max_concurrent, callbacks=callbacks, constants={"video": video},
        )  # fmt: skip
        out.append((video, results))
        if not is_complete(results, spec.num_samples):
            return out, False  # interrupted: later videos wait for --resume
    return out, True


# --- driver ---------------------------------------------------------------------------------------


def _exists(spec: SweepSpec, path: str) -> bool:
    if spec.kind == "inpaint-regularizers":
        return any(can_resume(f"{path}/{video}") for video, _ in _inpaint_videos(spec))
    return can_resume(path)


def run_sweep(spec: SweepSpec, *, resume: bool = False, stop_after: int | None = None) -> SweepOutcome:
    """Run (or, with ``resume``, continue) one sweep; needs ``ray.init`` done by the caller.

    ``stop_after`` interrupts this session after that many finished trials (as Ctrl-C would);
    ``resume=True`` then continues without redoing finished trials.
    """
    path = experiment_path(spec.name)
    exists = _exists(spec, path)
    if exists and not resume:
        raise ConfigError(f"sweep {spec.name!r} already has results at {path}; use --resume, or set name=… to start anew", spec.path)
    if resume and not exists:
        raise ConfigError(f"nothing to resume: no sweep {spec.name!r} at {path}", spec.path)
    prepared = _prepare_train(spec) if spec.kind != "inpaint-regularizers" else None
    set_session_budget(stop_after)
    params = {"spec": str(spec.path), "kind": spec.kind, "metric": spec.metric, "mode": spec.mode,
              "num_samples": spec.num_samples, "seed": spec.seed, "scheduler": asdict(spec.scheduler),
              "resources": asdict(spec.resources), "data": dict(spec.data), "base": dict(spec.base),
              "search_space": {p.name: {k: v for k, v in asdict(p).items() if v not in (None, ())} for p in spec.search_space}}  # fmt: skip
    with parent_run(spec.experiment, spec.name, path=path, resume=resume, params=params, tags={"vilocal.kind": spec.kind}) as run:
        parent = run.info.run_id
        logger = MLflowTrialLogger(experiment=spec.experiment, parent_run_id=parent, params_of=_params_of, run_name_of=_run_name)
        callbacks = [logger, SessionBudget()]
        try:
            if spec.kind == "inpaint-regularizers":
                per_video, complete = _fit_inpaint(spec, callbacks)
                rows = [row for video, results in per_video for row in result_rows(results, extra=lambda c, v=video: {"video": v, **c["params"]})]
            else:
                results, complete = _fit_train(spec, path, exists, callbacks, *prepared)
                rows = result_rows(results, extra=lambda c: dict(c["params"]))
                _close_train_runs(rows, spec.name)
        finally:
            set_session_budget(None)
            close_open_children(parent, spec.experiment)
        outcome = SweepOutcome(spec.name, path, parent, spec.metric, spec.param_names, rows, best_row(rows, spec.metric, spec.mode), complete)
        _log_report(spec, outcome)
    return outcome


def _log_report(spec: SweepSpec, outcome: SweepOutcome) -> None:
    import mlflow

    group = "video" if spec.kind == "inpaint-regularizers" else None
    with tempfile.TemporaryDirectory() as tmp:
        write_report(outcome.rows, tmp, metric=spec.metric, mode=spec.mode, params=spec.param_names, group=group,
                     extra_best={"base": dict(spec.base), "kind": spec.kind, "complete": outcome.complete})  # fmt: skip
        mlflow.log_artifacts(tmp)
    mlflow.log_text(spec.path.read_text(), f"spec/{spec.path.name}")
    if outcome.best is not None and math.isfinite(outcome.best.get(spec.metric, math.nan)):
        mlflow.log_metric(f"best/{spec.metric}", outcome.best[spec.metric])
    mlflow.set_tag("vilocal.complete", str(outcome.complete))


def run_spec_file(
    path: str | Path, overrides: Mapping[str, Any] | None = None, *, resume: bool = False,
    only: list[str] | None = None, stop_after: int | None = None,
) -> list[SweepOutcome]:
    """Validate every sub-sweep of a spec file first, then run them in order."""
    specs = load_specs(path, overrides, only)
    outcomes = []
    for spec in specs:
        outcome = run_sweep(spec, resume=resume and _exists(spec, experiment_path(spec.name)), stop_after=stop_after)
        outcomes.append(outcome)
        if not outcome.complete:
            break
    return outcomes
