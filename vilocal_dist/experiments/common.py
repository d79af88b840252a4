"""What the four protocols share: config files, the forged dataset, trained models, Ray tasks.

A protocol's config is a YAML mapping (``sweeps/experiments/NAME.yaml``; the tiny variant
``NAME-tiny.yaml`` is merged over it) plus ``--set a.b=value`` overrides (``vilocal_dist.config``). Sections every
training protocol shares:

* ``data`` (:class:`DataSpec`): which source videos are forged, at what size, and the split;
* ``methods`` / ``method_cfgs``: inpainting methods that forge them, and their options;
* ``train``: :class:`~vilocal_dist.engines.config.TrainConfig` keys;
* ``eval`` (:class:`EvalSpec`): how test videos are scored.

Work is cached under ``workdir`` (default ``$VILOCAL_HOME/experiments``) by content, so
protocols that need the same forged dataset or the same trained detector share it, and a rerun
after an interruption redoes only what is missing::

    WORKDIR/forged/<hash of data + methods>/   forged dataset (Tune fan-out, skips complete videos)
    WORKDIR/models/<hash of train + data + methods>/model.pt, outcome.json (+ encoder/model.pt:
                                                 the stage-1 checkpoint, when both stages ran)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from vilocal_dist.config import check_keys, from_mapping
from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.paths import spec_dir

log = logging.getLogger(__name__)

#: Where the sweep and protocol YAMLs live in a checkout (look them up with :func:`spec_file`).
SPEC_ROOT = spec_dir()  # package data: there in a checkout and in an installed package


# ----------------------------------------------------------------------------- config files


def spec_file(relative: str | Path) -> Path:
    """A spec shipped with the project, by its path under ``sweeps/`` (e.g. ``experiments/NAME.yaml``,
    ``demo.yaml``): the one place that knows where specs live."""
    return SPEC_ROOT / relative


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able object (cache keys, run names)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def workdir_of(cfg: Mapping[str, Any]) -> Path:
    """``cfg['workdir']`` or ``$VILOCAL_HOME/experiments`` (absolute; created)."""
    from vilocal_dist.tracking.setup import home_dir

    path = Path(cfg.get("workdir") or home_dir() / "experiments").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataSpec:
    """The videos a protocol forges and how they are split (``data:`` section), or an existing
    dataset (``dataset:``, e.g. from ``vilocal data import``) used as it is instead."""

    dataset: str = ""  # a forged or imported dataset folder: nothing is forged, the keys below are unused
    sources: tuple[str, ...] = ()  # "davis" (the shared root), DAVIS roots (every sequence), folders, videos
    composed: int = 0  # plus N built-in composed videos (seeds seed … seed+N-1)
    frames: int = 24  # frames per composed video
    size_h: int = 240  # composed size, and resize of the other sources
    size_w: int = 432
    max_frames: int = 0  # use at most this many frames of each source (0 = all)
    test_fraction: float = 0.25  # share of SOURCE videos in the test split
    seed: int = 0
    cpus_per_trial: float = 1.0  # forge fan-out resources
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0
    retries: int = 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str | Path | None = None) -> DataSpec:
        spec = from_mapping(cls, d, "data", source)
        if spec.composed < 0 or spec.frames < 1 or spec.size_h < 16 or spec.size_w < 16:
            raise ConfigError("data: composed ≥ 0, frames ≥ 1 and a size of at least 16×16 are needed", source)
        if not spec.sources and spec.composed == 0 and not spec.dataset:
            raise ConfigError("data: give sources: [...] and/or composed: N, or dataset: FOLDER", source)
        if not 0.0 < spec.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {spec.test_fraction}", source)
        return spec

    def identity(self) -> dict[str, Any]:
        """The fields that decide the dataset's content (not how fast it is made)."""
        skip = {"cpus_per_trial", "gpus_per_trial", "max_concurrent", "retries"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


def resolve_sources(specs: Sequence[str]) -> list[str]:
    """Source specs with ``davis`` replaced by the shared DAVIS root (``$VILOCAL_DAVIS_ROOT``)."""
    from vilocal_dist.paths import davis_root

    return [str(davis_root()) if spec == "davis" else spec for spec in specs]


def forge_videos(
    out: Path, data: DataSpec, methods: Sequence[str], method_cfgs: Mapping[str, Mapping[str, Any]], *,
    hold_out_last: bool = False,
) -> Any:
    """Forge every source with every method into ``out`` (Tune fan-out, one trial per video ×
    method; complete videos are never redone); returns the ForgeSummary. The test split is a
    hash of each source video's name, or with ``hold_out_last`` its last ``test_fraction`` of
    videos (a hash split of a handful of videos can leave one split empty)."""
    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs

    cfgs = {m: dict(method_cfgs.get(m) or {}) for m in methods}
    size = (data.size_h, data.size_w)
    videos = expand_sources(resolve_sources(data.sources), composed=data.composed, frames=data.frames, size=size,
                            seed=data.seed)
    jobs = plan_jobs(videos, list(methods), method_cfgs={m: c for m, c in cfgs.items() if c},
                     test_fraction=data.test_fraction, seed=data.seed)
    if hold_out_last:
        test_videos = {name for name, _ in videos[-max(1, round(len(videos) * data.test_fraction)):]}
        for job in jobs:
            job["split"] = "test" if job["video"] in test_videos else "train"
    splits = {job["split"] for job in jobs}
    if splits != {"train", "test"}:
        raise ConfigError(f"data: every source video landed in the {splits.pop()} split; add videos or change "
                          f"data.test_fraction ({data.test_fraction}) or data.seed")
    resize = size if data.sources else (0, 0)  # composed videos are generated at the size already
    opts = ForgeOptions(
        out=str(out), seed=data.seed, test_fraction=data.test_fraction, size_h=resize[0], size_w=resize[1],
        max_frames=data.max_frames, cpus_per_trial=data.cpus_per_trial, gpus_per_trial=data.gpus_per_trial,
        max_concurrent=data.max_concurrent, retries=data.retries,
    )
    return forge(jobs, opts)


def forge_dataset(
    data: DataSpec, methods: Sequence[str], method_cfgs: Mapping[str, Mapping[str, Any]], workdir: Path
) -> Path:
    """:func:`forge_videos` into a folder keyed by what it contains, so protocols share it; a
    failed video is an error (rerun to retry it). Returns the folder. With ``data.dataset`` that
    dataset is returned instead, once it holds every method in both splits."""
    if data.dataset:
        return existing_dataset(Path(data.dataset).expanduser(), methods)
    cfgs = {m: dict(method_cfgs.get(m) or {}) for m in methods}
    out = workdir / "forged" / config_hash({"data": data.identity(), "methods": cfgs})
    summary = forge_videos(out, data, methods, method_cfgs)
    if summary.failed:
        raise InputError(f"forging failed for {', '.join(summary.failed)}; rerun the experiment to retry them", out)
    return out


def existing_dataset(root: Path, methods: Sequence[str]) -> Path:
    """``root`` if its manifest has train and test videos of every method in ``methods``."""
    from vilocal_dist.data.manifest import ForgedDataset

    dataset = ForgedDataset(root)
    lacking = [f"{m} ({split})" for m in methods for split in ("train", "test") if not dataset.records(split=split, methods=[m])]
    if lacking:
        known = sorted({r["method"] for r in dataset.records()})
        raise ConfigError(f"data.dataset {root}: no videos of {', '.join(lacking)}; its methods are {known}")
    return root.resolve()


def manifest_sha256(data: Path) -> str:
    return hashlib.sha256((data / "manifest.jsonl").read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class TrainedModel:
    """A stage-2 detector trained (or found in the cache) for one condition."""

    key: str
    checkpoint: Path  # model.pt (optimizer state dropped)
    methods: tuple[str, ...]  # inpainting methods it was trained on
    run_ids: tuple[str, ...]  # MLflow runs of its training stages
    best_metrics: Mapping[str, float]
    reused: bool  # found complete in the cache, nothing trained now
    encoder: Path | None = None  # the folder of its stage-1 checkpoint when it trained both stages


def architecture_fingerprint(model_name: str) -> str:
    """Hash of the parameter names and shapes this build gives ``model_name``: a cached detector
    from an older build of the network is never reused (its weights would not load)."""
    from vilocal_dist.models import create_model

    state = create_model(model_name).state_dict()
    return config_hash({name: list(tensor.shape) for name, tensor in state.items()})


def train_model(
    cfg: Any, data: Path, methods: Sequence[str], *, workers: int, experiment: str, workdir: Path,
    stage: str = "both", encoder: Path | None = None,
) -> TrainedModel:
    """Train ViLocal on Ray Train (``cfg``: a TrainConfig; ``stage`` as for
    ``distributed.train.train``, default both stages; ``encoder`` the stage-1 checkpoint folder of
    stage "2") on the train split of ``methods``, or reuse the cached model trained with the same config
    and stages (and encoder) on the same data.

    The Ray Train run name is the cache key, so an interrupted training resumes when rerun.
    """
    from vilocal_dist.distributed.train import train
    from vilocal_dist.engines.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint

    methods = tuple(sorted(methods))
    identity = {"train": cfg.to_dict(), "data": manifest_sha256(data), "methods": methods,
                "architecture": architecture_fingerprint(cfg.model)}
    if stage != "both":
        identity["stage"] = stage
    if encoder is not None:
        identity["encoder"] = hashlib.sha256((Path(encoder) / CHECKPOINT_FILE).read_bytes()).hexdigest()
    key = config_hash(identity)
    folder = workdir / "models" / key
    done = folder / "outcome.json"
    stage1 = folder / "encoder"
    if done.is_file() and (folder / "model.pt").is_file():
        record = json.loads(done.read_text())
        log.info("model %s: reusing the detector trained on %s", key, "+".join(methods))
        return TrainedModel(key, folder / "model.pt", methods, tuple(record["run_ids"]), record["best_metrics"], True,
                            stage1 if (stage1 / CHECKPOINT_FILE).is_file() else None)
    outcomes = train(stage, cfg, data, run_name=f"exp-{key}", methods=list(methods), workers=workers,
                     experiment=experiment, encoder=encoder)
    if stage == "both":  # keep the stage-1 encoder: a variant of stage 2 can start from it
        with outcomes[0].ray_checkpoint.as_directory() as ckpt_dir:
            save_checkpoint({**load_checkpoint(ckpt_dir), "optim_state": None}, stage1)
    final = outcomes[-1]
    with final.ray_checkpoint.as_directory() as ckpt_dir:
        ckpt = load_checkpoint(ckpt_dir)
    save_checkpoint({**ckpt, "optim_state": None}, folder / "model.pt")
    record = {
        "key": key, "methods": list(methods), "stage": stage, "train_config": cfg.to_dict(), "data": str(data),
        "run_ids": [o.mlflow_run_id for o in outcomes], "checkpoints": [o.checkpoint for o in outcomes],
        "best_metrics": dict(final.best_metrics),
    }
    write_text_atomic(done, json.dumps(record, indent=2, sort_keys=True))
    return TrainedModel(key, folder / "model.pt", methods, tuple(record["run_ids"]), record["best_metrics"], False,
                        stage1 if (stage1 / CHECKPOINT_FILE).is_file() else None)


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalSpec:
    """How test videos are scored (``eval:`` section)."""

    threshold: float = 0.5
    batch_size: int = 4
    cpus: float = 1.0  # per Ray evaluation task
    gpus: float = 0.0  # per task; > 0 scores on CUDA

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str | Path | None = None) -> EvalSpec:
        spec = from_mapping(cls, d, "eval", source)
        if not 0.0 < spec.threshold < 1.0 or spec.batch_size < 1 or spec.cpus <= 0 or spec.gpus < 0:
            raise ConfigError("eval: threshold in (0, 1), batch_size ≥ 1, cpus > 0 and gpus ≥ 0 are needed", source)
        return spec

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


def _call_limited(fn: Callable[[Any], Any], item: Any, threads: int) -> Any:
    from vilocal_dist.distributed.tuning import limit_threads

    limit_threads(threads)
    return fn(item)


def ray_map(fn: Callable[[Any], Any], items: Sequence[Any], *, cpus: float = 1.0, gpus: float = 0.0,
            desc: str = "tasks") -> list[Any]:
    """``[fn(item) for item in items]`` as Ray tasks (as many at once as the cluster fits), in order.

    ``fn`` must be a module-level function. Each task pins torch/OpenCV to ``cpus`` threads so
    concurrent tasks do not oversubscribe the cores.
    """
    import ray
    from tqdm import tqdm

    from vilocal_dist.distributed.tuning import init_ray

    init_ray()
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=1)(_call_limited)
    refs = [task.remote(fn, item, max(1, int(cpus))) for item in items]
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="task", disable=len(refs) < 2) as bar:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            bar.update(len(ready))
    return ray.get(refs)


def compact_scores(scores: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an evaluation the tables use: F1/IoU (mean per frame) and pixel-pooled F1 overall
    and per method, frames, and
    the trivial "every pixel forged" predictor on the same frames (the floor a detector must beat)."""
    def brief(s: Mapping[str, Any]) -> dict[str, float]:
        return {"f1": s["pooled"]["f1"], "iou": s["pooled"]["iou"], "f1_pixel": s["pixel_pooled"]["f1"],
                "frames": s["frames"], "videos": s["videos"]}

    return {"all": brief(scores), "by_method": {m: brief(s) for m, s in scores.get("by_method", {}).items()},
            "all_forged": dict(scores["baselines"]["all_ones"]["pooled"])}


def baseline_note(score: Mapping[str, Any]) -> str:
    """The caption sentence naming the trivial predictor's IoU/F1 on the same test frames."""
    floor = score["all_forged"]
    return f"Predicting every pixel forged scores {pair(floor['iou'], floor['f1'])} on these frames."


# ----------------------------------------------------------------------------- training protocols

#: Top-level keys every protocol accepts.
COMMON_KEYS = ("description", "experiment", "workdir")
#: Sections of the protocols that forge a dataset and train detectors on it.
SETUP_KEYS = ("data", "methods", "method_cfgs", "train", "workers", "eval")


@dataclass(frozen=True)
class Setup:
    """Forged data, the detector's training config and how it is scored: shared by the
    generalization, compression and ablation protocols."""

    data: DataSpec
    methods: tuple[str, ...]  # inpainting methods forged (test split: all of them)
    method_cfgs: Mapping[str, Mapping[str, Any]]
    train: Any  # TrainConfig
    workers: int  # Ray Train workers per training run
    eval: EvalSpec


def method_list(value: Any, where: str, source: str | Path | None, *, known: Sequence[str] | None = None,
                registered: bool = True) -> tuple[str, ...]:
    """A non-empty list of distinct inpainting methods: registered ones unless ``registered`` is
    False (an existing dataset's, e.g. an imported one's), and within ``known`` if given."""
    from vilocal_dist.inpaint.registry import get_method

    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value or len(set(value)) != len(value):
        raise ConfigError(f"{where} must be a non-empty list of distinct method names, got {value!r}", source)
    for name in value:
        if registered and known is None:  # ``known`` names were checked when they were parsed
            get_method(str(name))  # unknown names fail here, with a suggestion
        if known is not None and name not in known:
            raise ConfigError(f"{where}: {name!r} is not among the forged methods {list(known)}", source)
    return tuple(str(v) for v in value)


def check_method_cfg(method: str, cfg: Any, where: str, source: str | Path | None) -> dict[str, Any]:
    """``cfg`` (a mapping of ``method``'s options) checked by the method itself, before any forging."""
    from vilocal_dist.inpaint.registry import check_method_config

    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where} must be a mapping of {method}'s options, got {cfg!r}", source)
    try:
        check_method_config(method, dict(cfg))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.problem}", source) from None
    return dict(cfg)


def parse_setup(raw: Mapping[str, Any], source: str | Path | None) -> Setup:
    """Validate the shared sections of a training protocol's config."""
    from vilocal_dist.engines.config import TrainConfig

    data = DataSpec.from_dict(raw.get("data"), source)
    # An existing dataset's methods need not be ones this package can run (e.g. imported VI/OP/CP).
    methods = method_list(raw.get("methods"), "methods", source, registered=not data.dataset)
    cfgs = raw.get("method_cfgs") or {}
    check_keys(cfgs, methods, "method_cfgs", source)
    cfgs = {m: check_method_cfg(m, c, f"method_cfgs.{m}", source) for m, c in cfgs.items()}
    workers = raw.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"workers must be an integer ≥ 1, got {workers!r}", source)
    try:
        train = TrainConfig.from_dict(raw.get("train") or {}, source=source)
    except ConfigError as exc:  # name the section and the file (range checks know neither)
        raise ConfigError(f"train: {exc.problem}", source) from None
    return Setup(
        data=data,
        methods=methods,
        method_cfgs=cfgs,
        train=train,
        workers=workers,
        eval=EvalSpec.from_dict(raw.get("eval"), source),
    )


# ----------------------------------------------------------------------------- small helpers


def pair(iou: float | None, f1: float | None, digits: int = 2) -> str:
    """The papers' ``IoU/F1`` cell, e.g. ``0.66/0.77``; missing values show as ``–``."""
    def num(x: float | None) -> str:
        return "–" if x is None or x != x else f"{x:.{digits}f}"

    return f"{num(iou)}/{num(f1)}"


def write_text_atomic(path: Path, text: str) -> Path:
    from vilocal_dist.storage import atomic_write_text

    atomic_write_text(path, text)
    return path
