"""Learning curves of internal inpainters: option variants side by side, against ground truth.

Each variant (a name and method options, e.g. an lr schedule) runs on every video that has a
ground truth (built-in composed videos: their clean backgrounds; DAVIS bmx-trees under the fixed
mask). Every evaluation of the stopping rule becomes a point of the curve: ``selfval/psnr``
(held-out known pixels, what the method can see) and ``true/hole_psnr`` (the hole against the
ground truth, what users care about), against iterations and seconds. Output: a table (where each
variant stopped, its final hole PSNR, its wall time), a 2×2 plot, JSON, and optionally MLflow (one
run per variant and video with the curves as stepped metrics, the plot on a parent run).

Script: ``python -m vilocal_dist.inpaint.curves --composed 2 --method iivi --set iivi.preset=tiny \
--variant const-2e-4:lr=2e-4 --variant cosine-1e-3:lr=1e-3,lr_schedule=cosine --plot curves.png``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vilocal_dist.config import apply_sets, parse_sets, size_arg
from vilocal_dist.errors import ConfigError

CURVE_KEYS = ("selfval/psnr", "true/hole_psnr")


@dataclass
class Curve:
    """One variant on one video: its points and final scores."""

    variant: str
    video: str
    options: dict[str, Any]
    points: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)  # quality_metrics of the composited result
    iterations: int = 0
    seconds: float = 0.0


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` (values as in ``--set``) -> (NAME, options)."""
    name, _, rest = text.partition(":")
    if not name:
        raise ConfigError(f"--variant {text!r}: give NAME:key=value,...")
    pairs = [p for p in rest.split(",") if p.strip()]
    try:
        return name, apply_sets({}, parse_sets(pairs)) if pairs else {}
    except ConfigError as exc:
        raise ConfigError(f"--variant {text!r}: {exc}") from None


def run_curve(method: str, video: tuple[str, np.ndarray, np.ndarray, np.ndarray], variant: str,
              options: Mapping[str, Any], seed: int = 0) -> Curve:  # fmt: skip
    """Fit ``method`` with ``options`` on one (name, frames, masks, gt) video, watching its curve."""
    from vilocal_dist.inpaint.metrics import quality_metrics
    from vilocal_dist.inpaint.registry import get_method
    from vilocal_dist.inpaint.stopping import watch

    name, frames, masks, gt = video
    started = time.perf_counter()
    with watch(gt_frames=gt) as w:
        result = get_method(method)(frames, masks, dict(options), seed=seed, progress=False)
    seconds = time.perf_counter() - started
    iterations = int(result.metrics.get("train/iters", result.metrics.get("train/updates", 0)))
    return Curve(variant, name, dict(options), list(w.history), quality_metrics(result.frames, gt, masks), iterations, seconds)


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_all(method: str, videos: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
            variants: Sequence[tuple[str, dict[str, Any]]], base: Mapping[str, Any], *, jobs: int = 1,
            seed: int = 0) -> list[Curve]:  # fmt: skip
    """Every variant on every video, ``jobs`` fits at a time (each with cores/jobs threads)."""
    tasks = [(method, v, name, {**base, **opts}, seed) for name, opts in variants for v in videos]
    if jobs <= 1:
        return [run_curve(*t) for t in tasks]
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, initializer=_worker_init, initargs=(threads,)) as pool:
        return list(pool.map(run_curve, *zip(*tasks)))


def summary_rows(curves: Sequence[Curve]) -> list[dict[str, Any]]:
    """Per variant: mean iterations, seconds, final hole PSNR / SSIM and best-seen curve values."""
    rows = []
    for variant in dict.fromkeys(c.variant for c in curves):
        group = [c for c in curves if c.variant == variant]
        rows.append({
            "variant": variant,
            "videos": len(group),
            "iterations": float(np.mean([c.iterations for c in group])),
            "seconds": float(np.mean([c.seconds for c in group])),
            "psnr_hole": float(np.mean([c.final["psnr_hole"] for c in group])),
            "ssim_hole": float(np.mean([c.final["ssim_hole"] for c in group])),
            "selfval_final": float(np.mean([c.points[-1]["selfval/psnr"] if c.points else math.nan for c in group])),
        })  # fmt: skip
    return rows


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| variant | videos | iterations (mean) | seconds (mean) | hole PSNR | hole SSIM | selfval PSNR |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['variant']} | {r['videos']} | {r['iterations']:.0f} | {r['seconds']:.0f} | "
                     f"{r['psnr_hole']:.2f} | {r['ssim_hole']:.3f} | {r['selfval_final']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def curves_figure(lines: Sequence[tuple[str, Sequence[Mapping[str, float]]]], title: str = "") -> Any:
    """2×2 figure: hole PSNR against the ground truth and self-validation PSNR, against iterations
    and against seconds; ``lines`` = (label, curve points), one colour per label, a line each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey="row")
    labels = list(dict.fromkeys(label for label, _ in lines))
    legended: set[str] = set()
    for label, points in lines:
        for row, key in enumerate(("true/hole_psnr", "selfval/psnr")):
            pts = [p for p in points if isinstance(p.get(key), (int, float)) and math.isfinite(p[key])]
            if not pts:
                continue
            for col, x in enumerate(("iteration", "seconds")):
                axes[row][col].plot([p[x] for p in pts], [p[key] for p in pts], color=f"C{labels.index(label)}",
                                    alpha=0.8, lw=1, label=None if label in legended else label)  # fmt: skip
            legended.add(label)
    axes[0][0].set_ylabel("hole PSNR vs ground truth (dB)")
    axes[1][0].set_ylabel("self-validation PSNR (dB)")
    axes[1][0].set_xlabel("iterations")
    axes[1][1].set_xlabel("seconds")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(curves: Sequence[Curve], path: str | Path, title: str = "") -> Path:
    """``curves_figure`` of every (variant, video) curve, saved as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = curves_figure([(c.variant, c.points) for c in curves], title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_to_mlflow(curves: Sequence[Curve], rows: Sequence[Mapping[str, Any]], uri: str, experiment: str,
                  plot: Path | None, params: Mapping[str, Any]) -> str:  # fmt: skip
    """A parent run with the summary and plot, a child run per (variant, video) whose curves are
    stepped metrics (step = iteration); returns the parent's run id."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="learning-curves", tags={"vilocal.kind": "curves"}) as parent:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for r in rows:
            mlflow.log_metrics({f"{r['variant']}/{k}": float(r[k]) for k in ("iterations", "seconds", "psnr_hole")})
        if plot is not None:
            mlflow.log_artifact(str(plot))
        for c in curves:
            with mlflow.start_run(run_name=f"{c.variant}/{c.video}", nested=True):
                mlflow.log_params({"variant": c.variant, "video": c.video, **{k: str(v) for k, v in c.options.items()}})
                for p in c.points:
                    step = int(p["iteration"])
                    mlflow.log_metrics({f"curve/{k.replace('/', '_')}": float(p[k]) for k in (*CURVE_KEYS, "seconds")
                                        if k in p and math.isfinite(p[k])}, step=step)  # fmt: skip
                mlflow.log_metrics({f"final/{k}": float(v) for k, v in c.final.items() if math.isfinite(v)})
                mlflow.log_metrics({"iterations": float(c.iterations), "seconds": c.seconds})
        return parent.info.run_id


def main(argv: list[str] | None = None) -> int:
    from vilocal_dist.inpaint.quality import composed_videos, davis_fixed_videos

    p = argparse.ArgumentParser(prog="python -m vilocal_dist.inpaint.curves", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="iivi", help="internal method: iivi or intervi")
    p.add_argument("--composed", type=int, default=1, metavar="N", help="built-in composed videos (object masks)")
    p.add_argument("--davis-fixed", action="store_true", help="also bmx-trees under the fixed mask")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--size", type=size_arg(), default=(64, 112), metavar="HxW")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="option of every variant")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:K=V,...", help="a variant (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="fits at a time (processes)")
    p.add_argument("--plot", default=None, metavar="PNG")
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--mlflow-uri", default=None, help="log runs and the plot here")
    p.add_argument("--experiment", default="vilocal-inpaint-curves")
    args = p.parse_args(argv)
    try:
        base = apply_sets({}, parse_sets(args.sets))
        variants = [parse_variant(v) for v in args.variant] or [("default", {})]
    except ConfigError as exc:
        p.error(str(exc))
    videos = list(composed_videos(args.composed, args.frames, args.size))
    if args.davis_fixed:
        videos += list(davis_fixed_videos(args.frames, args.size))
    if not videos:
        p.error("no videos: give --composed N and/or --davis-fixed")
    curves = run_all(args.method, videos, variants, base, jobs=args.jobs)
    rows = summary_rows(curves)
    print(format_rows(rows), flush=True)
    plot = plot_curves(curves, args.plot, f"{args.method} {args.frames}×{args.size[0]}×{args.size[1]}") if args.plot else None
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows,
                                               "curves": [c.__dict__ for c in curves]}, indent=1, default=str))  # fmt: skip
    if args.mlflow_uri:
        run_id = log_to_mlflow(curves, rows, args.mlflow_uri, args.experiment, plot, {**vars(args), "base": base})
        print(f"MLflow run {run_id} ({args.mlflow_uri}, experiment {args.experiment})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
