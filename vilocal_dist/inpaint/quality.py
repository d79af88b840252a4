"""PSNR / SSIM / temporal-consistency tables of inpainting methods on videos with ground truth.

Two protocols, both scored on composited frames (see ``metrics``):

* composed videos (``vilocal_dist.data.composed``): real photographs filmed by a moving camera with
  objects gliding over them; the objects are the holes, the clean camera view is the ground truth
  (as in InterVI's Composed dataset);
* fixed masks on DAVIS bmx-trees: a centred rectangle of ¼ width × ¼ height in every frame, the
  original frames are the ground truth (the hole's pixels are blanked in the method's input).

Script: ``python -m vilocal_dist.inpaint.quality --composed 3 --frames 12 --size 64x112 \
--methods telea,ns,flowprop,intervi --set intervi.preset=tiny`` (and/or ``--davis-fixed``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from vilocal_dist.config import apply_sets, check_keys, parse_sets, size_arg
from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint.registry import get_method
from vilocal_dist.inpaint.metrics import fixed_masks, quality_metrics

Video = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # (name, frames, masks, gt_frames)
METRIC_KEYS = ("psnr", "ssim", "psnr_hole", "ssim_hole", "tc", "seconds")


def quality_table(
    methods: list[str],
    videos: Iterable[Video],
    cfg_per_method: dict[str, dict[str, Any]] | None = None,
    *,
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run every method on every video and score it against the ground truth.

    videos: (name, frames uint8 T×H×W×3, masks bool T×H×W, gt uint8 T×H×W×3). Returns one row per
    (method, video) — ``{'method', 'video', psnr, ssim, psnr_hole, ssim_hole, tc, seconds}`` —
    grouped by method, each group followed by a ``video='mean'`` row (NaNs ignored).
    """
    cfg_per_method = cfg_per_method or {}
    runners = {name: get_method(name) for name in methods}  # unknown names fail before any work
    per_method: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
    for video_name, frames, masks, gt in videos:
        for name, method in runners.items():
            started = time.perf_counter()
            result = method(frames, masks, cfg_per_method.get(name), seed=seed, progress=progress)
            seconds = time.perf_counter() - started
            scores = quality_metrics(result.frames, gt, masks)
            per_method[name].append({"method": name, "video": video_name, **scores, "seconds": seconds})
    rows: list[dict[str, Any]] = []
    for name in methods:
        group = per_method[name]
        rows.extend(group)
        if group:
            means = {k: _nanmean([r[k] for r in group]) for k in METRIC_KEYS}
            rows.append({"method": name, "video": "mean", **means})
    return rows


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``quality_table`` rows."""
    header = "| method | video | PSNR | SSIM | PSNR hole | SSIM hole | TC (dB) | time (s) |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|"]
    formats = dict(psnr="{:.2f}", ssim="{:.4f}", psnr_hole="{:.2f}", ssim_hole="{:.4f}", tc="{:.2f}", seconds="{:.1f}")
    for row in rows:
        cells = [formats[k].format(row[k]) if not math.isnan(row[k]) else "–" for k in METRIC_KEYS]
        name = f"**{row['video']}**" if row["video"] == "mean" else row["video"]
        lines.append(f"| {row['method']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def composed_videos(count: int, num_frames: int, size: tuple[int, int]) -> Iterator[Video]:
    """Built-in composed videos ``composed:0`` … ``composed:count-1``; ground truth = backgrounds."""
    from vilocal_dist.data.composed import compose_video

    for seed in range(count):
        video = compose_video(seed, num_frames, size)
        yield video.name, video.frames, video.masks, video.backgrounds


def davis_fixed_videos(num_frames: int, size: tuple[int, int] | None, seq: str = "bmx-trees") -> Iterator[Video]:
    """A DAVIS sequence under the fixed-mask protocol; the hole is blanked in the input frames."""
    from vilocal_dist.data.sources import load_video, open_source
    from vilocal_dist.paths import davis_root

    frames, _ = load_video(open_source(davis_root(), seq=seq), size, num_frames, require_masks=False)
    masks = fixed_masks(*frames.shape[:3])
    blanked = np.where(masks[..., None], np.uint8(0), frames)
    yield f"{seq}-fixed", blanked, masks, frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m vilocal_dist.inpaint.quality",
        description="PSNR/SSIM/temporal-consistency table of inpainting methods (markdown on stdout).",
    )
    p.add_argument("--composed", type=int, default=0, metavar="N", help="score on N built-in composed videos")
    p.add_argument("--davis-fixed", action="store_true", help="score on DAVIS bmx-trees with the fixed-mask protocol")
    p.add_argument("--frames", type=int, default=12, metavar="T", help="frames per video (default 12)")
    p.add_argument("--size", type=size_arg(), default=(64, 112), metavar="HxW", help="working resolution (default 64x112)")
    p.add_argument("--methods", default="telea,ns,flowprop", help="comma-separated method names")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="METHOD.KEY=VALUE", help="method option")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--progress", action="store_true", help="show the methods' progress bars")
    args = p.parse_args(argv)
    height, width = args.size
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        cfg = check_keys(apply_sets({}, parse_sets(args.sets)), methods, "", "--set METHOD.KEY=VALUE")
    except ConfigError as exc:
        p.error(str(exc))
    sections = []
    if args.composed:
        sections.append(("composed", composed_videos(args.composed, args.frames, (height, width))))
    if args.davis_fixed:
        sections.append(("davis-fixed", davis_fixed_videos(args.frames, (height, width))))
    if not sections:
        p.error("nothing to score: give --composed N and/or --davis-fixed")
    all_rows = {}
    for title, videos in sections:
        rows = quality_table(methods, videos, cfg, seed=args.seed, progress=args.progress)
        all_rows[title] = rows
        print(f"\n### {title} ({args.frames} frames, {height}x{width})\n\n{format_table(rows)}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "rows": all_rows}, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
