"""What the two training kinds share: the data recipe, the trial, and the Tune fit.

A training trial is a driver function (1 CPU) that fits Ray Train ``TorchTrainer``s through
``distributed.train.train_stage``, with ``TuneReportCallback`` forwarding the workers' reports to
Tune. Its Train workers take their own resources outside the trial (Ray Train's defaults: 1 CPU,
and 1 GPU on a GPU cluster, per worker), so the concurrency cap is sized for both:
``floor(CPUs / (1 + workers))`` trials at once (and ``floor(GPUs / workers)``), or drivers would
hold every CPU while their workers wait forever. Train runs are named
``<sweep>-<trial id>-stage<N>`` (no timestamps), so a restored trial resumes its Train run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from vilocal_dist.config import check_number, from_mapping, parse_size
from vilocal_dist.console import tune_verbosity
from vilocal_dist.distributed.kinds.base import SweepKind, Validator, scheduler_for, section, tune_space
from vilocal_dist.errors import ConfigError

TRAIN_EXPERIMENT = "vilocal-train"  # where train_stage records each stage's own run


@dataclass(frozen=True)
class ForgeData:
    """``data.forge``: the composed videos a training sweep forges before it starts."""

    composed: int = 4
    frames: int = 12
    size: str = "240x432"
    seed: int = 0
    methods: tuple[str, ...] = ("telea",)
    test_fraction: float = 0.25


@dataclass(frozen=True)
class TrainData:
    """``data``: the forged dataset a training sweep reads (built first when ``forge`` is given)."""

    root: str
    forge: ForgeData | None = None
    encoder: str | None = None  # focal sweeps: a trained stage-1 checkpoint to share

    def root_path(self) -> Path:
        """The dataset folder: a relative ``root`` lives under ``$VILOCAL_HOME``."""
        from vilocal_dist.tracking.setup import home_dir

        return (home_dir() / Path(self.root).expanduser()).resolve()


class TrainingKind(SweepKind):
    """A trial trains ViLocal on Ray Train; only stage 2 reports to Tune (``val/f1`` per epoch)."""

    experiment = "vilocal-sweep-train"
    metric = "val/f1"
    data_keys: ClassVar[tuple[str, ...]] = ("root", "forge")
    trains_stage1: ClassVar[bool]  # each trial trains its own stage-1 encoder first

    def validator(self, base: Mapping[str, Any], source: Path) -> Validator:
        from vilocal_dist.engines.config import TrainConfig

        TrainConfig.from_dict(dict(base), source=source)
        return lambda values: TrainConfig.from_dict({**base, **values}, source=source)

    def parse_data(self, data: Mapping[str, Any], source: Path) -> TrainData:
        d = section(data, self.data_keys, "data", source)
        if not d.get("root"):
            raise ConfigError("data.root: a forged dataset folder is needed (add forge: {...} to build it first)", source)
        forge = None
        if d.get("forge"):
            forge = from_mapping(ForgeData, d["forge"], "data.forge", source)
            for key in ("composed", "frames"):
                check_number(getattr(forge, key), f"data.forge.{key}", source, integer=True, minimum=1)
            parse_size(forge.size, where="data.forge.size", source=source)
        return TrainData(root=str(d["root"]), forge=forge, encoder=d.get("encoder"))

    def check_resources(self, resources: Mapping[str, Any], source: Path) -> None:
        # train_stage gives each Ray Train worker Ray Train's defaults (1 CPU; 1 GPU on a GPU
        # cluster): a per-trial CPU/GPU figure would be silently ignored, so refuse it.
        for key in ("cpus_per_trial", "gpus_per_trial"):
            if key in resources:
                raise ConfigError(f"resources.{key}: training sweeps size by workers_per_trial (each worker: 1 CPU, "
                                  "and 1 GPU on a GPU cluster); remove this key", source)  # fmt: skip

    def check_inputs(self, spec: Any) -> None:
        from vilocal_dist.data.manifest import ForgedDataset
        from vilocal_dist.engines.checkpoint import load_checkpoint
        from vilocal_dist.errors import InputError

        data: TrainData = spec.data
        if data.forge is None:
            root = data.root_path()
            if not ForgedDataset(root).records(split="train"):
                raise InputError(f"sweep {spec.name!r}: data.root holds no complete training videos "
                                 "(forge them first, or add data.forge to the spec)", root)  # fmt: skip
        if data.encoder:
            load_checkpoint(Path(data.encoder).expanduser())

    def prepare(self, spec: Any) -> tuple[str, str | None]:
        """(dataset root, shared encoder or None), built before the sweep's parent run opens: the
        forge and the encoder's training record MLflow runs of their own."""
        data = _train_data(spec.data)
        return data, self.shared_encoder(spec, data)

    def shared_encoder(self, spec: Any, data: str) -> str | None:
        """A stage-1 checkpoint every trial reuses, or None when each trial trains its own."""
        return None

    def fit(self, spec: Any, path: str, resume: bool, callbacks: list, prepared: Any) -> tuple[Any, bool]:
        from ray.tune.search.optuna import OptunaSearch

        from vilocal_dist.distributed.tuning import driver_env, is_complete

        data, encoder = prepared
        r = spec.resources
        trainable = tune.with_resources(
            tune.with_parameters(train_trial, stage1=self.trains_stage1, base=dict(spec.base), data=data,
                                 encoder=encoder, workers=r.workers_per_trial, sweep=spec.name, env=driver_env()),
            {"cpu": 1},  # the trial's driver; its Train workers ask for their own resources
        )  # fmt: skip
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
                run_config=tune.RunConfig(name=spec.name, storage_path=path.rsplit("/", 1)[0], callbacks=callbacks,
                                          verbose=tune_verbosity()),
            )
            results = tuner.fit()
        return results, is_complete(results, spec.num_samples)

    def rows(self, spec: Any, results: Any) -> list[dict[str, Any]]:
        rows = super().rows(spec, results)
        _close_train_runs(rows, spec.name)
        return rows


def train_concurrency(workers: int) -> int:
    """Training trials that fit at once: each holds 1 CPU for its driver plus, per Train worker,
    1 CPU and (on a cluster that has or can start GPUs) 1 GPU, as train_stage gives them."""
    from vilocal_dist.distributed.resources import cluster_capacity

    cap = cluster_capacity()
    fits = [math.floor(cap.max_cpus / (1 + workers))]
    if cap.has_gpus:
        fits.append(math.floor(cap.max_gpus / workers))
    return max(1, min(fits))


class StageTwoReport(TuneReportCallback):
    """Forwards a Train run's reports to Tune with fixed extra metrics (stage 1's best) attached."""

    def __init__(self, extra: Mapping[str, float]) -> None:
        super().__init__()
        self.extra = dict(extra)

    def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
        super().after_report(run_context, [{**self.extra, **metrics[0]}], checkpoint)


def train_trial(
    config: dict[str, Any], *, stage1: bool, base: dict[str, Any], data: str, encoder: str | None, workers: int,
    sweep: str, env: dict[str, str],
) -> None:
    """Tune trainable (a 1-CPU driver): stage 1 (when ``stage1``) then stage 2 on Ray Train.

    Only stage 2 reports to Tune (each epoch's ``val/f1``), so every result the searcher and ASHA
    see carries the metric; stage 1's best metrics ride along as ``stage1/*``.
    """
    from vilocal_dist.distributed.train import train_stage
    from vilocal_dist.distributed.tuning import adopt_env
    from vilocal_dist.engines.config import TrainConfig

    adopt_env(env)  # train_stage records to the driver's MLflow store and Ray storage
    cfg = TrainConfig.from_dict({**base, **config["params"]})  # Tune's samples as typed values
    run = f"{sweep}-{tune.get_context().get_trial_id()}"
    extra: dict[str, float] = {}
    encoder_ckpt: Any = encoder
    if stage1:
        first = train_stage(1, cfg, data, run_name=f"{run}-stage1", workers=workers, experiment=TRAIN_EXPERIMENT)
        encoder_ckpt = first.ray_checkpoint
        extra = {f"stage1/{k}": v for k, v in first.best_metrics.items() if isinstance(v, (int, float))}
    train_stage(
        2, cfg, data, run_name=f"{run}-stage2", workers=workers, encoder=encoder_ckpt,
        experiment=TRAIN_EXPERIMENT, callbacks=[StageTwoReport(extra)],
    )  # fmt: skip


def _train_data(data: TrainData) -> str:
    """The forged dataset root; built first (idempotently) when the spec has ``data.forge``."""
    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs

    root = str(data.root_path())
    f = data.forge
    if f is not None:
        videos = expand_sources([], composed=f.composed, frames=f.frames, size=parse_size(f.size), seed=f.seed)
        jobs = plan_jobs(videos, list(f.methods), test_fraction=f.test_fraction, seed=f.seed)
        summary = forge(jobs, ForgeOptions(out=root, seed=f.seed, retries=1))
        if summary.failed:
            raise RuntimeError(f"forging the sweep's data failed for {summary.failed}")
    return root


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
