"""ViLocal Table II: train on two inpainting methods, test on the seen ones and the unseen ones.

Protocol: forge every source video with every method (Tune fan-out; splits by source video, so
no test scene is ever trained on); for each training set of methods (default: every pair) train
both ViLocal stages on Ray Train on the train split of those methods only; score each detector
on the whole test split (Ray tasks) and report pooled IoU / F1 per test method, marking the
methods seen in training with ``*`` as the paper does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from vilocal_dist.errors import ConfigError
from vilocal_dist.experiments.common import (
    COMMON_KEYS,
    SETUP_KEYS,
    Setup,
    TrainedModel,
    baseline_note,
    check_keys,
    compact_scores,
    forge_dataset,
    method_list,
    pair,
    parse_setup,
    ray_map,
    train_model,
)

COLUMNS = ["condition", "test_method", "seen", "iou", "f1", "frames", "videos"]


@dataclass(frozen=True)
class GeneralizationConfig:
    setup: Setup
    train_on: tuple[tuple[str, ...], ...]  # one detector per entry


def validate(raw: Mapping[str, Any], source: str | Path | None) -> GeneralizationConfig:
    check_keys(raw, COMMON_KEYS + SETUP_KEYS + ("train_on",), "", source)
    setup = parse_setup(raw, source)
    train_on = raw.get("train_on") or list(itertools.combinations(setup.methods, 2))
    if not isinstance(train_on, (list, tuple)):
        raise ConfigError(f"train_on must be a list of method lists, got {train_on!r}", source)
    sets = tuple(method_list(entry, f"train_on[{i}]", source, known=setup.methods) for i, entry in enumerate(train_on))
    if not sets:
        raise ConfigError("train_on: at least two methods are needed to form a training pair", source)
    return GeneralizationConfig(setup, sets)


def score_checkpoint(job: Mapping[str, Any]) -> dict[str, Any]:
    """Ray task: pixel F1 / IoU of one checkpoint on a forged dataset's test split, by method.

    job: checkpoint, data, threshold, batch_size, device. Returns :func:`compact_scores` of it.
    """
    from vilocal_dist.engines.evaluate import evaluate_checkpoint

    scores = evaluate_checkpoint(job["checkpoint"], job["data"], split="test", threshold=job["threshold"],
                                 batch_size=job["batch_size"], device=job["device"], progress=False)
    return compact_scores(scores)


def score_models(setup: Setup, data: Path, models: Sequence[TrainedModel]) -> list[dict[str, Any]]:
    """Test-split scores of every model (one Ray task each), in order (also used by the ablation)."""
    jobs = [{"checkpoint": str(m.checkpoint), "data": str(data), "threshold": setup.eval.threshold,
             "batch_size": setup.eval.batch_size, "device": setup.eval.device} for m in models]
    return ray_map(score_checkpoint, jobs, cpus=setup.eval.cpus, gpus=setup.eval.gpus, desc="evaluate")


def method_rows(condition: str, methods: Sequence[str], seen: Sequence[str], score: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Long-form rows (one per test method) of one trained model's test scores."""
    rows = []
    for method in methods:
        s = score["by_method"].get(method)
        rows.append({"condition": condition, "test_method": method, "seen": method in seen,
                     "iou": s["iou"] if s else None, "f1": s["f1"] if s else None,
                     "frames": s["frames"] if s else 0, "videos": s["videos"] if s else 0})
    return rows


def condition_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Child-run metrics from ``method_rows``: per method, and the seen / unseen means."""
    out: dict[str, float] = {}
    for row in rows:
        if row["f1"] is not None:
            out[f"test/{row['test_method']}/f1"] = row["f1"]
            out[f"test/{row['test_method']}/iou"] = row["iou"]
    for group, flag in (("seen", True), ("unseen", False)):
        chosen = [r for r in rows if r["seen"] is flag and r["f1"] is not None]
        if chosen:
            out[f"test/{group}/f1"] = sum(r["f1"] for r in chosen) / len(chosen)
            out[f"test/{group}/iou"] = sum(r["iou"] for r in chosen) / len(chosen)
    return out


def label(methods: Sequence[str]) -> str:
    return "+".join(methods)


def run(config: GeneralizationConfig, recorder: Any, *, workdir: Path) -> Any:
    from vilocal_dist.experiments.registry import Outcome

    setup = config.setup
    data = forge_dataset(setup.data, setup.methods, setup.method_cfgs, workdir)
    models = []
    for methods in config.train_on:
        model = train_model(setup.train, data, methods, workers=setup.workers, experiment=recorder.experiment,
                            workdir=workdir)
        if not model.reused:
            recorder.adopt(model.run_ids, label(methods))
        models.append(model)
    scores = score_models(setup, data, models)

    rows: list[dict[str, Any]] = []
    for methods, model, score in zip(config.train_on, models, scores):
        group = method_rows(label(methods), setup.methods, methods, score)
        rows += group
        recorder.child(
            label(methods),
            params={"train_on": label(methods), "model": str(model.checkpoint), "model_key": model.key,
                    "reused": model.reused, "data": str(data)},
            metrics=condition_metrics(group),
            tags={"vilocal.train_runs": ",".join(model.run_ids)},
        )
    markdown = format_table(rows, setup.methods, caption=_caption(setup, data) + " " + baseline_note(scores[0]))
    return Outcome(rows, COLUMNS, markdown, figures={"plots/f1_by_method.png": figure(rows, setup.methods)})


def _caption(setup: Setup, data: Path) -> str:
    return (f"IoU/F1 pooled over every test frame, threshold {setup.eval.threshold}; * = inpainting method seen in "
            f"training. Model {setup.train.model} at {setup.train.size_h}x{setup.train.size_w}; data {data}.")


def format_table(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], caption: str = "") -> str:
    """Table II layout: one line per training set, one IoU/F1 column per test method (``*`` = seen),
    then the means over seen and over unseen methods."""
    lines = ["| trained on | " + " | ".join(methods) + " | seen (mean) | unseen (mean) |",
             "|---|" + "---:|" * (len(methods) + 2)]
    for condition in dict.fromkeys(r["condition"] for r in rows):
        group = {r["test_method"]: r for r in rows if r["condition"] == condition}
        cells = [pair(group[m]["iou"], group[m]["f1"]) + (" *" if group[m]["seen"] else "") for m in methods]
        for flag in (True, False):
            chosen = [r for r in group.values() if r["seen"] is flag and r["f1"] is not None]
            cells.append(pair(_mean(chosen, "iou"), _mean(chosen, "f1")))
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\n" + caption if caption else "") + "\n"


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    return sum(r[key] for r in rows) / len(rows) if rows else None


def figure(rows: Sequence[Mapping[str, Any]], methods: Sequence[str],
           title: str = "Cross-method generalization (ViLocal Table II)", prefix: str = "trained on ") -> Any:
    """Grouped bars: F1 per test method for each condition (row ``condition``); unseen methods hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    width = 0.8 / max(len(conditions), 1)
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2.5, 3.6))
    for i, condition in enumerate(conditions):
        group = {r["test_method"]: r for r in rows if r["condition"] == condition}
        for j, method in enumerate(methods):
            row = group[method]
            ax.bar(j + (i - (len(conditions) - 1) / 2) * width, row["f1"] or 0.0, width, color=f"C{i}",
                   hatch=None if row["seen"] else "//", edgecolor="black", linewidth=0.5,
                   label=f"{prefix}{condition}" if j == 0 else None)
    ax.set_xticks(range(len(methods)), methods)
    ax.set_xlabel("test inpainting method (hatched = unseen in training)")
    ax.set_ylabel("F1 (mean per frame)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return fig
