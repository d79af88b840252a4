"""Mask propagation scored against a DAVIS sequence's annotations: per-frame IoU, time, load.

    python -m vilocal_dist.bench.propagation ../shared/data/davis --seq bmx-trees --frames 0 40 \\
        --size 240x432 --plot docs/propagation_iou.png [--mlflow-uri sqlite:///mlruns.db]

For each annotated frame given, the annotation of that frame alone is propagated to every frame
and compared with every annotation (IoU of the undilated masks; empty vs empty counts 1). Prints
a table (mean IoU over all frames and per quarter of the video, seconds, load average) and writes
the per-frame IoU curves to one PNG; with ``--mlflow-uri`` each start frame is an MLflow run with
the curve as a figure and the per-frame IoU and confidence as metrics (step = frame).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from vilocal_dist.config import size_arg
from vilocal_dist.data.sources import load_video, open_source
from vilocal_dist.inpaint import propagation


def iou_per_frame(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of each frame's bool masks (T×H×W); frames where both are empty score 1."""
    inter = (pred & truth).reshape(len(pred), -1).sum(axis=1)
    union = (pred | truth).reshape(len(pred), -1).sum(axis=1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def evaluate(frames: np.ndarray, truth: np.ndarray, start: int, cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """Propagate ``truth[start]`` and score it; figures for the table, the plot and MLflow."""
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    result = propagation.propagate_mask(frames, truth[start], start, cfg, seed=seed, progress=False)
    seconds = time.perf_counter() - began
    iou = iou_per_frame(result.masks, truth)
    quarters = np.array_split(iou, 4)
    return {
        "start": start,
        "mean_iou": float(iou.mean()),
        "quarter_iou": [float(q.mean()) for q in quarters],
        "seconds": seconds,
        "load": [load_before, os.getloadavg()[0]],
        "iou": iou.tolist(),
        "confidence": result.confidence.tolist(),
        "flagged": result.flagged,
        "iters": result.iters,
        "stop": result.stop,
        "adapt_iters": result.adapt_iters,
    }


def plot(rows: list[dict[str, Any]], path: Path | None, title: str) -> Any:
    """Per-frame IoU (solid, when known) and the propagation's own confidence (dotted) per start frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    for n, row in enumerate(rows):
        color = f"C{n}"
        if row.get("confidence") is not None:
            ax.plot(row["confidence"], ":", color=color, label=f"from frame {row['start']}: confidence")
        if row.get("iou") is not None:
            ax.plot(row["iou"], color=color, label=f"from frame {row['start']}: IoU (mean {row['mean_iou']:.2f})")
        ax.axvline(row["start"], color=color, lw=0.8, alpha=0.5)
    ax.set(xlabel="frame", ylabel="IoU / confidence", ylim=(0, 1.02), title=title)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vilocal_dist.bench.propagation", description=__doc__.split("\n\n")[0])
    p.add_argument("davis", help="DAVIS root (JPEGImages/, Annotations/), or any video source with masks")
    p.add_argument("--seq", default=None, help="sequence of a DAVIS root with several")
    p.add_argument("--frames", type=int, nargs="+", default=[0], help="annotated frames to start from")
    p.add_argument("--size", type=size_arg(16), default=None, metavar="HxW")
    p.add_argument("--prop", action="append", default=[], metavar="KEY=VALUE", help="propagation option")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", type=Path, default=None, help="write the IoU curves here (PNG)")
    p.add_argument("--json", type=Path, default=None, help="write every figure here")
    p.add_argument("--mlflow-uri", default=None, help="log one run per start frame to this tracking URI")
    args = p.parse_args(argv)
    cfg = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.prop)}
    propagation.check_propagation_config(cfg)
    frames, truth = load_video(open_source(args.davis, seq=args.seq), args.size)
    rows = []
    print(f"{'start':>5} {'mean IoU':>8}  quarters                 {'s':>6}  iters        load")
    for start in args.frames:
        row = evaluate(frames, truth, start, cfg, args.seed)
        rows.append(row)
        quarters = " ".join(f"{q:.2f}" for q in row["quarter_iou"])
        print(
            f"{start:>5} {row['mean_iou']:>8.3f}  {quarters}  {row['seconds']:>6.0f}  "
            f"{row['iters']}+{row['adapt_iters']} ({row['stop']})  {row['load'][0]:.1f}→{row['load'][1]:.1f}"
        )
    name = args.seq or Path(args.davis).name
    title = f"{name}, {frames.shape[1]}×{frames.shape[2]}: one annotated frame"
    if args.plot:
        plot(rows, args.plot, title)
    if args.json:
        args.json.write_text(json.dumps({"size": list(frames.shape[1:3]), "config": cfg, "rows": rows}, indent=2))
    if args.mlflow_uri:
        _log(rows, cfg, args)
    return 0


def _log(rows: list[dict[str, Any]], cfg: dict[str, Any], args: argparse.Namespace) -> None:
    import mlflow

    from vilocal_dist.tracking.runs import log_figure, mlflow_run

    for row in rows:
        params = {"video": args.davis, "seq": args.seq, "start": row["start"], "size": args.size, **cfg}
        with mlflow_run("mask-propagation", f"{args.seq or 'video'}-from-{row['start']}", params=params, uri=args.mlflow_uri):
            mlflow.log_metrics({"mean_iou": row["mean_iou"], "seconds": row["seconds"], "load": row["load"][0]})
            for t, (iou, conf) in enumerate(zip(row["iou"], row["confidence"])):
                mlflow.log_metrics({"iou": iou, "confidence": conf}, step=t)
            log_figure(plot([row], None, f"{args.seq or args.davis} from frame {row['start']}"), "iou.png")


if __name__ == "__main__":
    raise SystemExit(main())
