"""ViLocal Table V and its controls: what HP3D, the contrastive stage and the fine-tuning contribute.

Protocol: like the generalization protocol with one training set (``train_on``, the paper's VI
and OP; the remaining forged methods are the unseen test methods, the paper's CP), one detector
per condition, all on the same data, model and epochs. The shipped conditions:

* ``no_hp3d`` — the two stages with raw RGB into the encoder instead of the HP3D noise residual
  (training config ``use_hp3d: false``);
* ``no_contrastive`` — no stage 1: encoder and decoder trained together with the focal loss only
  (``stage: joint``, the same number of epochs as both stages together);
* ``random_frozen`` — the control: a never-trained encoder, frozen, under a decoder trained for the
  stage-2 epochs (``stage: random``); what ``full`` gains over it is what stage 1 taught the encoder;
* ``full`` — stage 1 (contrastive, encoder) then stage 2 (focal, frozen encoder, decoder);
* ``finetune`` — stage 1, then a stage 2 that fine-tunes the encoder too, at a tenth of the
  decoder's learning rate (``stage2_encoder_lr_factor: 0.1``).

A condition is any ``train`` override of ``TrainConfig`` plus a training ``stage`` of
``distributed.train`` ("both", "joint" or "random"); both are checked when the YAML is read.
Conditions whose stage 1 would be identical (``TrainConfig.stage1_identity``: ``full`` and
``finetune``) share it: the later one runs stage 2 only, from the earlier one's stage-1 encoder,
so the comparison is paired and stage 1 is paid once.

Every detector is scored at each of ``thresholds`` on the test split and on the train split (the
scenes it trained on: the gap to the test split is what it memorised). The main table is the test
split at ``eval.threshold``; a second one gives F1 at every threshold, seen and unseen methods.

``cross_domain`` (optional) adds a test the in-domain splits cannot: real footage (e.g. DAVIS
bmx-trees with its object masks) forged by methods the detectors never saw (e.g. converged IIVI).
The detectors train on composed videos; a variant that only learned the composed videos' look
fails here. Its table gives F1 (mean per frame and pixel-pooled) at every threshold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from vilocal_dist.engines.config import check_stage
from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.experiments.common import (
    COMMON_KEYS,
    SETUP_KEYS,
    DataSpec,
    Setup,
    TrainedModel,
    baseline_note,
    check_keys,
    check_method_cfg,
    compact_scores,
    config_hash,
    forge_dataset,
    method_list,
    pair,
    parse_setup,
    ray_map,
    resolve_sources,
    train_model,
)
from vilocal_dist.experiments.generalization import condition_metrics, figure, method_rows

COLUMNS = ["condition", "label", "test_method", "seen", "iou", "f1", "frames", "videos"]
CONDITION_KEYS = ("name", "label", "train", "stage")
CROSS_KEYS = ("sources", "methods", "method_cfgs", "max_frames", "size_h", "size_w")
#: Training modes that end in a full detector (a stage-2 checkpoint).
DETECTOR_STAGES = ("both", "joint", "random")
#: Every detector is scored on both splits: test (unseen scenes) and train (the scenes it learned).
SPLITS = ("test", "train")
DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7)


@dataclass(frozen=True)
class Condition:
    name: str
    label: str  # the row title, e.g. "Ours w/o HP3D"
    train: Mapping[str, Any]  # TrainConfig overrides
    stage: str  # "both" (contrastive, then focal), "joint" (focal only, end to end), "random" (stage 2 only)


@dataclass(frozen=True)
class CrossDomain:
    """Real footage forged by methods the detectors never saw (``cross_domain:`` section)."""

    data: DataSpec  # sources, size and frames of the footage (every video is a test video)
    methods: tuple[str, ...]
    method_cfgs: Mapping[str, Mapping[str, Any]]

    def label(self) -> str:
        names = ", ".join(Path(s).name for s in self.data.sources)
        return f"{names} forged by {'+'.join(self.methods)}"


@dataclass(frozen=True)
class AblationConfig:
    setup: Setup
    train_on: tuple[str, ...]
    conditions: tuple[Condition, ...]
    thresholds: tuple[float, ...]  # scored at each; the main table at setup.eval.threshold
    cross: CrossDomain | None = None


def _condition(d: Any, index: int, setup: Setup, source: str | Path | None) -> Condition:
    d = check_keys(d, CONDITION_KEYS, f"conditions[{index}]", source)
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"conditions[{index}] needs a name", source)
    train = d.get("train") or {}
    if not isinstance(train, Mapping):
        raise ConfigError(f"conditions[{index}].train must be a mapping of training config keys", source)
    stage = str(d.get("stage", "both"))
    if stage not in DETECTOR_STAGES:
        raise ConfigError(f"conditions[{index}].stage must be one of {', '.join(DETECTOR_STAGES)}, got {stage!r}",
                          source)
    try:  # the overrides must make a legal training config, and one that fits the stage
        check_stage(stage, setup.train.replace(**train))
    except ConfigError as exc:
        raise ConfigError(f"conditions[{index}].train: {exc.problem}", source) from None
    return Condition(name, str(d.get("label", name)), dict(train), stage)


def _thresholds(value: Any, main: float, source: str | Path | None) -> tuple[float, ...]:
    """The scoring thresholds, sorted, with the main one (``eval.threshold``) among them."""
    if value is None:
        value = list(DEFAULT_THRESHOLDS)
    if (not isinstance(value, (list, tuple)) or not value
            or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 < t < 1.0 for t in value)):
        raise ConfigError(f"thresholds must be a non-empty list of numbers in (0, 1), got {value!r}", source)
    return tuple(sorted({float(t) for t in value} | {main}))


def validate(raw: Mapping[str, Any], source: str | Path | None) -> AblationConfig:
    check_keys(raw, COMMON_KEYS + SETUP_KEYS + ("train_on", "conditions", "thresholds", "cross_domain"), "", source)
    setup = parse_setup(raw, source)
    train_on = method_list(raw.get("train_on") or list(setup.methods[:2]), "train_on", source, known=setup.methods)
    items = raw.get("conditions")
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError("conditions must be a non-empty list of {name, label, train, stage}", source)
    conditions = tuple(_condition(d, i, setup, source) for i, d in enumerate(items))
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ConfigError(f"condition names must differ, got {names}", source)
    return AblationConfig(setup, train_on, conditions, _thresholds(raw.get("thresholds"), setup.eval.threshold, source),
                          _cross_domain(raw.get("cross_domain"), setup, source))


def _cross_domain(raw: Any, setup: Setup, source: str | Path | None) -> CrossDomain | None:
    """The ``cross_domain`` section: footage with object masks and the unseen forgers to apply."""
    if raw is None:
        return None
    raw = check_keys(raw, CROSS_KEYS, "cross_domain", source)
    sources = raw.get("sources")
    if not isinstance(sources, (list, tuple)) or not sources or not all(isinstance(x, str) for x in sources):
        raise ConfigError("cross_domain.sources must be a non-empty list of videos, folders or 'davis'", source)
    methods = method_list(raw.get("methods") or [], "cross_domain.methods", source)
    cfgs = raw.get("method_cfgs") or {}
    if not isinstance(cfgs, Mapping) or set(cfgs) - set(methods):
        raise ConfigError(f"cross_domain.method_cfgs must be a mapping over cross_domain.methods {list(methods)}", source)
    method_cfgs = {m: check_method_cfg(m, cfgs.get(m) or {}, f"cross_domain.method_cfgs.{m}", source) for m in methods}
    sizes = {k: raw.get(k, getattr(setup.data, k)) for k in ("size_h", "size_w", "max_frames")}
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes.values()) or min(
            sizes["size_h"], sizes["size_w"]) < 16 or sizes["max_frames"] < 0:  # fmt: skip
        raise ConfigError(f"cross_domain: size_h/size_w must be integers ≥ 16 and max_frames ≥ 0, got {sizes}", source)
    data = dataclasses.replace(setup.data, dataset="", sources=tuple(sources), composed=0, **sizes)
    return CrossDomain(data, tuple(methods), method_cfgs)


def forge_cross_domain(cross: CrossDomain, workdir: Path) -> Path:
    """Forge the cross-domain footage (every video in the test split) into a folder keyed by its
    content; a failed video is an error. Returns the folder."""
    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs

    d = cross.data
    cfgs = {m: dict(cross.method_cfgs.get(m) or {}) for m in cross.methods}
    out = workdir / "forged-cross" / config_hash({"data": d.identity(), "methods": cfgs})
    videos = expand_sources(resolve_sources(d.sources), size=(d.size_h, d.size_w))
    jobs = plan_jobs(videos, list(cross.methods), method_cfgs={m: c for m, c in cfgs.items() if c}, test_fraction=0.5)
    for job in jobs:
        job["split"] = "test"  # footage from another domain: nothing of it is trained on
    summary = forge(jobs, ForgeOptions(out=str(out), seed=d.seed, test_fraction=0.5, size_h=d.size_h, size_w=d.size_w,
                                       max_frames=d.max_frames, cpus_per_trial=d.cpus_per_trial,
                                       gpus_per_trial=d.gpus_per_trial, max_concurrent=d.max_concurrent,
                                       retries=d.retries))  # fmt: skip
    if summary.failed:
        raise InputError(f"forging the cross-domain videos failed for {', '.join(summary.failed)}; rerun to retry", out)
    return out


def _threshold_key(threshold: float) -> str:
    """How scores and columns name a threshold: ``0.3``, ``0.5``."""
    return f"{threshold:g}"


def score_checkpoint(job: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Ray task: ``{split: {threshold key: compact scores}}`` of one checkpoint on every split of
    ``SPLITS`` (one pass of the model per split, every threshold from the same predictions)."""
    from vilocal_dist.engines.evaluate import evaluate_checkpoint

    out = {}
    plan = [(split, job["data"], split) for split in SPLITS]
    if job.get("cross"):
        plan.append(("cross", job["cross"], "test"))
    for name, data, split in plan:
        scores = evaluate_checkpoint(job["checkpoint"], data, split=split, threshold=job["thresholds"][0],
                                     also_at=job["thresholds"], batch_size=job["batch_size"], device=job["device"],
                                     progress=False)
        out[name] = {t: compact_scores(s) for t, s in scores["at_threshold"].items()}
    return out


def _train(config: AblationConfig, recorder: Any, data: Path, workdir: Path) -> tuple[list[TrainedModel], list[str]]:
    """One detector per condition (cached ones reused), and for each the condition whose stage 1 it
    shares ("" when it trained its own)."""
    setup = config.setup
    encoders: dict[str, tuple[str, Path]] = {}  # stage-1 identity -> (condition, its stage-1 checkpoint folder)
    models, shared = [], []
    for cond in config.conditions:
        cfg = setup.train.replace(**cond.train)
        identity = config_hash(cfg.stage1_identity())
        source = encoders.get(identity) if cond.stage == "both" else None
        model = train_model(cfg, data, config.train_on, workers=setup.workers, experiment=recorder.experiment,
                            workdir=workdir, stage="2" if source else cond.stage,
                            encoder=source[1] if source else None)
        if cond.stage == "both" and source is None and model.encoder is not None:
            encoders[identity] = (cond.name, model.encoder)
        if not model.reused:
            recorder.adopt(model.run_ids, cond.name)
        models.append(model)
        shared.append(source[0] if source else "")
    return models, shared


def run(config: AblationConfig, recorder: Any, *, workdir: Path) -> Any:
    from vilocal_dist.experiments.registry import Outcome

    setup = config.setup
    data = forge_dataset(setup.data, setup.methods, setup.method_cfgs, workdir)
    cross = forge_cross_domain(config.cross, workdir) if config.cross else None
    models, shared = _train(config, recorder, data, workdir)
    jobs = [{"checkpoint": str(m.checkpoint), "data": str(data), "thresholds": config.thresholds,
             "batch_size": setup.eval.batch_size, "device": setup.eval.device, "cross": str(cross) if cross else ""}
            for m in models]  # fmt: skip
    scores = ray_map(score_checkpoint, jobs, cpus=setup.eval.cpus, gpus=setup.eval.gpus, desc="evaluate")

    main = _threshold_key(setup.eval.threshold)
    extra = {f"{split}_f1@{t}": (split, t) for split in SPLITS for t in map(_threshold_key, config.thresholds)}
    rows: list[dict[str, Any]] = []
    for cond, model, score, stage1_from in zip(config.conditions, models, scores, shared):
        params = {"condition": cond.name, "label": cond.label, "stage": cond.stage, "train": dict(cond.train),
                  "train_on": "+".join(config.train_on), "model": str(model.checkpoint), "reused": model.reused,
                  "stage1_shared_with": stage1_from}
        group = []
        for row in method_rows(cond.name, setup.methods, config.train_on, score["test"][main]):
            by_split = {column: _method_f1(score[split][t], row["test_method"]) for column, (split, t) in extra.items()}
            group.append({**row, "label": cond.label, **by_split})
        cross_metrics = {}
        if "cross" in score:
            crossed = {_threshold_key(t): score["cross"][_threshold_key(t)]["all"] for t in config.thresholds}
            for row in group:
                row.update({f"cross_f1@{t}": s["f1"] for t, s in crossed.items()}
                           | {f"cross_f1px@{t}": s["f1_pixel"] for t, s in crossed.items()})
            cross_metrics = {f"cross/f1_at_{t}": s["f1"] for t, s in crossed.items()}
            cross_metrics |= {f"cross/f1_pixel_at_{t}": s["f1_pixel"] for t, s in crossed.items()}
        recorder.child(cond.name, params=params, tags={"vilocal.train_runs": ",".join(model.run_ids)},
                       metrics={**condition_metrics(group), **_threshold_metrics(group, extra), **cross_metrics})
        rows += group
    caption = (f"IoU/F1 = mean of per-frame scores over every test frame at threshold {setup.eval.threshold:g}; "
               f"trained on {'+'.join(config.train_on)} (*), the other methods unseen. Model {setup.train.model} at "
               f"{setup.train.size_h}x{setup.train.size_w}. " + baseline_note(scores[0]["test"][main]))
    markdown = (format_table(rows, setup.methods, caption) + "\n"
                + format_threshold_table(rows, config.thresholds))
    columns = COLUMNS + list(extra)
    if config.cross:
        floor = scores[0]["cross"][main]["all_forged"]
        markdown += "\n" + format_cross_table(rows, config.thresholds, config.cross.label(), floor)
        columns += [f"cross_{kind}@{_threshold_key(t)}" for kind in ("f1", "f1px") for t in config.thresholds]
    fig = figure(rows, setup.methods, title="Ablation (ViLocal Table V)", prefix="")
    return Outcome(rows, columns, markdown, figures={"plots/f1_by_method.png": fig})


def format_cross_table(rows: Sequence[Mapping[str, Any]], thresholds: Sequence[float], label: str,
                       floor: Mapping[str, float]) -> str:  # fmt: skip
    """One line per condition: cross-domain F1 at each threshold, mean per frame and pixel-pooled."""
    ts = "/".join(_threshold_key(t) for t in thresholds)
    lines = [f"| variant | F1, mean per frame ({ts}) | F1, pixel-pooled ({ts}) |", "|---|---:|---:|"]
    for condition in dict.fromkeys(r["condition"] for r in rows):
        r = next(x for x in rows if x["condition"] == condition)
        cells = ["/".join(f"{r[f'cross_{kind}@{_threshold_key(t)}']:.2f}" for t in thresholds) for kind in ("f1", "f1px")]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\nCross-domain: {label}, methods no detector saw in training. Predicting every "
                               f"pixel forged scores F1 {floor['f1']:.2f} (mean per frame) on these frames.\n")


def _method_f1(score: Mapping[str, Any], method: str) -> float | None:
    s = score["by_method"].get(method)
    return s["f1"] if s else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _threshold_metrics(group: Sequence[Mapping[str, Any]], columns: Mapping[str, tuple[str, str]]) -> dict[str, float]:
    """Child-run metrics ``<split>/<seen|unseen>/f1_at_<t>``: the mean over the methods of each kind."""
    out = {}
    for column, (split, threshold) in columns.items():
        for kind, flag in (("seen", True), ("unseen", False)):
            value = _mean([r[column] for r in group if r["seen"] is flag])
            if value is not None:
                out[f"{split}/{kind}/f1_at_{threshold}"] = value
    return out


def format_table(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], caption: str = "") -> str:
    """Table V layout: one line per condition, one IoU/F1 column per test method (``*`` = seen)."""
    seen = {r["test_method"] for r in rows if r["seen"]}
    header = [m + ("*" if m in seen else "") for m in methods]
    lines = ["| variant | " + " | ".join(header) + " |", "|---|" + "---:|" * len(methods)]
    for condition in dict.fromkeys(r["condition"] for r in rows):
        group = {r["test_method"]: r for r in rows if r["condition"] == condition}
        first = next(iter(group.values()))
        lines.append(f"| {first['label']} | " + " | ".join(pair(group[m]["iou"], group[m]["f1"]) for m in methods) + " |")
    return "\n".join(lines) + ("\n\n" + caption if caption else "") + "\n"


def format_threshold_table(rows: Sequence[Mapping[str, Any]], thresholds: Sequence[float]) -> str:
    """One line per condition: F1 at each threshold (``a/b/c``), mean over the seen and over the
    unseen methods, on the test and on the train split."""
    ts = "/".join(_threshold_key(t) for t in thresholds)
    kinds = [(split, kind, flag) for split in SPLITS for kind, flag in (("seen", True), ("unseen", False))]
    lines = ["| variant | " + " | ".join(f"{split}, {kind}" for split, kind, _ in kinds) + " |",
             "|---|" + "---:|" * len(kinds)]
    for condition in dict.fromkeys(r["condition"] for r in rows):
        group = [r for r in rows if r["condition"] == condition]
        cells = []
        for split, _, flag in kinds:
            chosen = [r for r in group if r["seen"] is flag]
            values = [_mean([r[f"{split}_f1@{_threshold_key(t)}"] for r in chosen]) for t in thresholds]
            cells.append("/".join("–" if v is None else f"{v:.2f}" for v in values))
        lines.append(f"| {group[0]['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\nF1 (mean of per-frame scores) at thresholds {ts}, averaged over the seen (*) "
                               "and over the unseen methods; train = the scenes the detectors trained on "
                               "(validation videos included).\n")
