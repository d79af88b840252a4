"""Sweep summaries from plain result rows: best config, CSV / markdown tables and plots.

A row is a flat dict, one per trial, e.g. ``{"trial_id": "a1", "status": "TERMINATED",
"tau": 0.1, "val/f1": 0.42, "iterations": 3}``. Nothing here knows Ray or MLflow, so every
function is testable on hand-made rows; the Tune/MLflow layer only hands rows in and uploads the
files that come out.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

Row = Mapping[str, Any]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_row(rows: Sequence[Row], metric: str, mode: str) -> Row | None:
    """The row with the highest (``mode='max'``) or lowest metric; rows without a finite one are
    skipped; ties go to the earlier row. None when no row has the metric."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    sign = 1.0 if mode == "max" else -1.0
    best: Row | None = None
    for row in rows:
        value = row.get(metric)
        if _finite(value) and (best is None or sign * value > sign * best[metric]):
            best = row
    return best


def best_per_group(rows: Sequence[Row], metric: str, mode: str, key: str) -> dict[str, Row]:
    """``best_row`` within each value of ``key`` (e.g. per video), in order of first appearance."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(str(row.get(key)), []).append(row)
    out = {g: best_row(members, metric, mode) for g, members in groups.items()}
    return {g: r for g, r in out.items() if r is not None}


def columns_for(rows: Sequence[Row], first: Sequence[str] = ()) -> list[str]:
    """``first`` (those present) then every other key in order of first appearance."""
    seen: dict[str, None] = {}
    for key in first:
        if any(key in row for row in rows):
            seen[key] = None
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def to_csv(rows: Sequence[Row], columns: Sequence[str]) -> str:
    """CSV text (full precision); missing cells are empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns})
    return buf.getvalue()


def to_markdown(rows: Sequence[Row], columns: Sequence[str], digits: int = 4) -> str:
    """A GitHub-flavoured markdown table; floats to ``digits`` significant digits."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = [_fmt(row.get(c), digits).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sort_rows(rows: Sequence[Row], metric: str, mode: str) -> list[Row]:
    """Best first; rows without a finite metric last (in their original order)."""
    sign = -1.0 if mode == "max" else 1.0
    scored = [r for r in rows if _finite(r.get(metric))]
    rest = [r for r in rows if not _finite(r.get(metric))]
    return sorted(scored, key=lambda r: sign * r[metric]) + rest


def is_log_scale(values: Sequence[Any]) -> bool:
    """Positive numbers spanning more than a factor of 10 read better on a log axis."""
    nums = [v for v in values if _finite(v)]
    return bool(nums) and min(nums) > 0 and max(nums) / min(nums) > 10


def normalise(values: Sequence[Any], log: bool = False) -> tuple[list[float], list[str]]:
    """Column values → positions in [0, 1] for a parallel-coordinates axis, plus tick labels.

    Numbers are min-max scaled (in log10 when ``log``); a constant column sits at 0.5; anything
    else (strings, bools) is placed by its sorted distinct values.
    """
    if all(_finite(v) for v in values):
        xs = [math.log10(v) for v in values] if log else [float(v) for v in values]
        lo, hi = min(xs), max(xs)
        if hi == lo:
            return [0.5] * len(xs), [_fmt(values[0], 3)]
        return [(x - lo) / (hi - lo) for x in xs], [_fmt(min(values), 3), _fmt(max(values), 3)]
    levels = sorted({str(v) for v in values})
    if len(levels) == 1:
        return [0.5] * len(values), levels
    pos = {lvl: i / (len(levels) - 1) for i, lvl in enumerate(levels)}
    return [pos[str(v)] for v in values], levels


def metric_vs_param_figure(rows: Sequence[Row], metric: str, param: str) -> Any:
    """Scatter of ``metric`` against one parameter (log x-axis for wide positive ranges)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r[param], r[metric]) for r in rows if param in r and _finite(r.get(metric))]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [p[0] for p in pts]
    if all(_finite(x) for x in xs):
        ax.scatter(xs, [p[1] for p in pts], s=28)
        if is_log_scale(xs):
            ax.set_xscale("log")
    else:
        levels = sorted({str(x) for x in xs})
        ax.scatter([levels.index(str(x)) for x in xs], [p[1] for p in pts], s=28)
        ax.set_xticks(range(len(levels)), levels)
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {param} ({len(pts)} trials)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def parallel_coordinates_figure(rows: Sequence[Row], metric: str, params: Sequence[str]) -> Any:
    """One line per trial across the parameter axes and the metric axis, coloured by the metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if _finite(r.get(metric)) and all(p in r for p in params)]
    axes_names = [*params, metric]
    fig, ax = plt.subplots(figsize=(1.8 * len(axes_names) + 2, 4))
    if done:
        columns = []
        for name in axes_names:
            vals = [r[name] for r in done]
            columns.append(normalise(vals, log=name != metric and is_log_scale(vals)))
        scores = [r[metric] for r in done]
        lo, hi = min(scores), max(scores)
        cmap = plt.get_cmap("viridis")
        for i, score in enumerate(scores):
            shade = 0.5 if hi == lo else (score - lo) / (hi - lo)
            ax.plot(range(len(axes_names)), [col[0][i] for col in columns], color=cmap(shade), alpha=0.8)
        for j, (_, labels) in enumerate(columns):
            ax.text(j, -0.06, labels[0], ha="center", va="top", fontsize=8)
            ax.text(j, 1.04, labels[-1], ha="center", va="bottom", fontsize=8)
        mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
        fig.colorbar(mappable, ax=ax, label=metric)
    ax.set_xticks(range(len(axes_names)), axes_names)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    for j in range(len(axes_names)):
        ax.axvline(j, color="0.6", lw=0.8)
    ax.set_title(f"parallel coordinates ({len(done)} trials)")
    fig.tight_layout()
    return fig


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(
    rows: Sequence[Row], out_dir: str | Path, *, metric: str, mode: str, params: Sequence[str],
    group: str | None = None, extra_best: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write best_config.json, results.csv, results.md and PNG plots into ``out_dir``.

    Returns {artifact name: path}. With ``group`` (e.g. ``"video"`` for per-video λ sweeps)
    best_config.json also holds the best row of each group under ``per_<group>``.
    ``extra_best`` is merged into best_config.json (e.g. the fixed base config).
    """
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    ordered = sort_rows(rows, metric, mode)
    columns = columns_for(ordered, first=("trial_id", "video", "status", *params, metric, "iterations"))
    best = best_row(rows, metric, mode)
    best_doc = {
        "metric": metric,
        "mode": mode,
        "value": None if best is None else best[metric],
        "trial_id": None if best is None else best.get("trial_id"),
        "config": {} if best is None else {p: best.get(p) for p in params},
        **(extra_best or {}),
    }
    if group is not None:
        best_doc[f"per_{group}"] = {
            g: {"value": r[metric], "trial_id": r.get("trial_id"), "config": {p: r.get(p) for p in params}}
            for g, r in best_per_group(rows, metric, mode, group).items()
        }
    files = {
        "best_config.json": out / "best_config.json",
        "results.csv": out / "results.csv",
        "results.md": out / "results.md",
    }
    _atomic_write(files["best_config.json"], json.dumps(best_doc, indent=2, sort_keys=True, default=str))
    _atomic_write(files["results.csv"], to_csv(ordered, columns))
    _atomic_write(files["results.md"], to_markdown(ordered, columns))
    figures = {f"plots/{metric.replace('/', '_')}_vs_{p}.png": metric_vs_param_figure(rows, metric, p) for p in params}
    figures["plots/parallel_coordinates.png"] = parallel_coordinates_figure(rows, metric, params)
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        files[name] = out / name
    return files
