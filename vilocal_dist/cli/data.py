"""`vilocal data …`: inspect a video source, write built-in composed videos."""

from __future__ import annotations

import argparse
import json
import sys

from vilocal_dist.cli.args import parse_size
from vilocal_dist.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect video sources, write built-in composed videos",
        description="Inspect a video source (DAVIS layout, video file + masks, frame folder, forged "
        "video) or write built-in composed videos (real photographs, moving camera, moving objects).",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    inspect = sub.add_parser(
        "inspect",
        help="frames, size, mask count and masked fraction of a source",
        description="Decode a source once (validating every frame and mask) and report frames, height, "
        "width, mask frame count and mean masked fraction.",
    )
    inspect.add_argument(
        "source",
        help="DAVIS root (with --seq), DAVIS sequence folder, video file, frame folder, forged video "
        "folder, or composed:SEED[:FRAMES[:HxW]]",
    )
    inspect.add_argument("--seq", help="sequence name inside a DAVIS root")
    inspect.add_argument(
        "--masks",
        choices=("annotations", "masks"),
        default="annotations",
        help="DAVIS mask folder: Annotations (object labels) or Masks (dilated binary masks)",
    )
    inspect.add_argument("--mask-path", help="mask folder or mask video for a video file / frame folder")
    inspect.add_argument("--object-id", type=int, help="select one object of multi-object annotations")
    inspect.add_argument("--quick", action="store_true", help="read headers only (no full decode)")
    inspect.add_argument("--max-pixels", type=int, default=8192 * 8192, help="largest frame accepted (pixels)")
    inspect.add_argument("--max-frames", type=int, default=100_000, help="longest video accepted (frames)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")

    compose = sub.add_parser(
        "compose",
        help="write composed videos in DAVIS layout with ground-truth backgrounds",
        description="Write N composed videos (lossless PNG) as OUT/JPEGImages/480p/<seq>, "
        "OUT/Annotations/480p/<seq> (0/255 masks) and OUT/Backgrounds/480p/<seq> (clean frames). "
        "The same seed gives byte-identical files.",
    )
    compose.add_argument("--out", required=True, help="output folder (a DAVIS-layout root)")
    compose.add_argument("--videos", type=int, default=4, help="number of videos (default 4)")
    compose.add_argument("--frames", type=int, default=24, help="frames per video (default 24)")
    compose.add_argument("--size", type=parse_size, default=(240, 432), help="HxW (default 240x432)")
    compose.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.set_defaults(func=run)


def inspect_source(args: argparse.Namespace) -> dict:
    """The report `data inspect` prints, as a dict."""
    from vilocal_dist.data.sources import open_source
    from vilocal_dist.video.validate import Limits

    limits = Limits(max_pixels=args.max_pixels, max_frames=args.max_frames)
    source = open_source(
        args.source, seq=args.seq, object_id=args.object_id, masks=args.masks, mask_path=args.mask_path, limits=limits
    )
    frames = source.num_frames
    if not args.quick:
        frames = sum(1 for _ in source.iter_frames())  # decodes everything: corrupt data surfaces here
    fractions = [float(mask.mean()) for mask in source.iter_masks()] if source.has_masks else []
    info = getattr(source, "info", None)
    return {
        "name": source.name,
        "source": source.spec,
        "frames": frames,
        "height": source.height,
        "width": source.width,
        "mask_frames": len(fractions),
        "mean_mask_fraction": round(sum(fractions) / len(fractions), 6) if fractions else None,
        "fps": getattr(info, "fps", None),
        "codec": getattr(info, "codec", None),
        "backgrounds": source.has_backgrounds,
    }


def run_inspect(args: argparse.Namespace) -> int:
    report = inspect_source(args)
    if args.json:
        print(json.dumps(report))
    else:
        width = max(len(key) for key in report)
        for key, value in report.items():
            print(f"{key:<{width}}  {value}")
    return 0


def run_compose(args: argparse.Namespace) -> int:
    from vilocal_dist.data.composed import write_composed_dataset

    if args.videos < 1 or args.frames < 1:
        raise ConfigError(f"--videos and --frames must be at least 1, got {args.videos} and {args.frames}")
    progress = sys.stderr.isatty()
    written = write_composed_dataset(args.out, args.videos, args.frames, args.size, args.seed, progress=progress)
    for path in written:
        print(path)
    return 0


def run(args: argparse.Namespace) -> int:
    return {"inspect": run_inspect, "compose": run_compose}[args.data_command](args)
