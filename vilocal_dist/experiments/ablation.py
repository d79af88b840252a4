"""ViLocal Table V: what HP3D and the contrastive stage contribute.

Protocol: like the generalization protocol with one training set (``train_on``, the paper's VI
and OP; the remaining forged methods are the unseen test methods, the paper's CP), one detector
per condition, all scored on the same test split:

* ``full`` — stage 1 (contrastive, encoder) then stage 2 (focal, frozen encoder, decoder);
* ``no_hp3d`` — the same with raw RGB into the encoder instead of the HP3D noise residual
  (training config ``use_hp3d: false``);
* ``no_contrastive`` — no stage 1: encoder and decoder trained together with the focal loss only
  (``stage: joint``, the same number of epochs as both stages together).

A condition is any ``train`` override of ``TrainConfig`` plus a training ``stage`` of
``distributed.train`` ("both" or "joint"); both are checked when the YAML is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from vilocal_dist.errors import ConfigError
from vilocal_dist.experiments.common import (
    COMMON_KEYS,
    SETUP_KEYS,
    Setup,
    baseline_note,
    check_keys,
    forge_dataset,
    method_list,
    pair,
    parse_setup,
    train_model,
)
from vilocal_dist.experiments.generalization import condition_metrics, figure, method_rows, score_models

COLUMNS = ["condition", "label", "test_method", "seen", "iou", "f1", "frames", "videos"]
CONDITION_KEYS = ("name", "label", "train", "stage")
#: Training modes that end in a full detector (a stage-2 checkpoint).
DETECTOR_STAGES = ("both", "joint")


@dataclass(frozen=True)
class Condition:
    name: str
    label: str  # the row title, e.g. "Ours w/o HP3D"
    train: Mapping[str, Any]  # TrainConfig overrides
    stage: str  # "both" (contrastive stage, then focal stage) or "joint" (focal only, end to end)


@dataclass(frozen=True)
class AblationConfig:
    setup: Setup
    train_on: tuple[str, ...]
    conditions: tuple[Condition, ...]


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
    try:  # the overrides must make a legal training config
        setup.train.replace(**train)
    except ConfigError as exc:
        raise ConfigError(f"conditions[{index}].train: {exc.problem}", source) from None
    return Condition(name, str(d.get("label", name)), dict(train), stage)


def validate(raw: Mapping[str, Any], source: str | Path | None) -> AblationConfig:
    check_keys(raw, COMMON_KEYS + SETUP_KEYS + ("train_on", "conditions"), "", source)
    setup = parse_setup(raw, source)
    train_on = method_list(raw.get("train_on") or list(setup.methods[:2]), "train_on", source, known=setup.methods)
    items = raw.get("conditions")
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError("conditions must be a non-empty list of {name, label, train, stage}", source)
    conditions = tuple(_condition(d, i, setup, source) for i, d in enumerate(items))
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ConfigError(f"condition names must differ, got {names}", source)
    return AblationConfig(setup, train_on, conditions)


def run(config: AblationConfig, recorder: Any, *, workdir: Path) -> Any:
    from vilocal_dist.experiments.registry import Outcome

    setup = config.setup
    data = forge_dataset(setup.data, setup.methods, setup.method_cfgs, workdir)
    models = []
    for cond in config.conditions:
        model = train_model(setup.train.replace(**cond.train), data, config.train_on, workers=setup.workers,
                            experiment=recorder.experiment, workdir=workdir, stage=cond.stage)
        if not model.reused:
            recorder.adopt(model.run_ids, cond.name)
        models.append(model)
    names = [c.name for c in config.conditions]
    scores = dict(zip(names, score_models(setup, data, models)))

    rows: list[dict[str, Any]] = []
    for cond, model in zip(config.conditions, models):
        params = {"condition": cond.name, "label": cond.label, "stage": cond.stage, "train": dict(cond.train),
                  "train_on": "+".join(config.train_on), "model": str(model.checkpoint), "reused": model.reused}
        group = [{**r, "label": cond.label}
                 for r in method_rows(cond.name, setup.methods, config.train_on, scores[cond.name])]
        recorder.child(cond.name, params=params, metrics=condition_metrics(group),
                       tags={"vilocal.train_runs": ",".join(model.run_ids)})
        rows += group
    caption = (f"IoU/F1 pooled over every test frame; trained on {'+'.join(config.train_on)} (*), the other "
               f"methods unseen. Model {setup.train.model} at {setup.train.size_h}x{setup.train.size_w}. "
               + baseline_note(next(iter(scores.values()))))
    fig = figure(rows, setup.methods, title="Ablation (ViLocal Table V)", prefix="")
    return Outcome(rows, COLUMNS, format_table(rows, setup.methods, caption), figures={"plots/f1_by_method.png": fig})


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
