"""`vilocal data …`: inspect a video source, write built-in composed videos, import a dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vilocal_dist.cli.args import parse_size
from vilocal_dist.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="inspect video sources, write built-in composed videos, import a forged dataset",
        description="Inspect a video source (DAVIS layout, video file + masks, frame folder, forged "
        "video), write built-in composed videos (real photographs, moving camera, moving objects), or "
        "import an existing forged dataset (any inpainter) for train / evaluate / the experiments.",
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
    _register_import(sub)
    parser.set_defaults(func=run)


IMPORT_DESCRIPTION = """\
Build a dataset that train, evaluate, the sweeps and the experiments read exactly like a forged
one (manifest.jsonl, splits by source video) from forged videos that already exist.

SOURCE is a folder with one subfolder per inpainting method, or a list file:
  SOURCE/<method>/<sequence>/00000.jpg …   frames (or <sequence>.mp4, or a DAVIS root
                                           <method>/JPEGImages/480p/<seq> with Annotations/)
  masks of <sequence>, the first found:    <method>/masks/<sequence>/ (also Masks/, Annotations/),
                                           <method>/<sequence>_masks/ or <sequence>_mask.mp4,
                                           --masks DIR/<sequence>/, SOURCE/masks/<sequence>/
  list.csv | list.json | list.jsonl        rows of video, mask, method[, source][, split]
                                           (paths relative to the list file)

Every video is validated first (frames readable and of one size, one mask per frame of that size,
not all empty, none covering the whole frame); all problems are listed together and nothing is
written (exit 2). Files are hard-linked into OUT where the filesystem allows it, else referenced
in place (recorded per video as storage: link | reference); --copy copies them instead. The
manifest is written last, in one atomic rename, so an interrupted import is not a dataset."""

IMPORT_EPILOG = """\
examples:
  # DAVIS-based sets: one folder per inpainter, masks shared by all of them
  vilocal data import /data/davis_inpainted --masks /data/DAVIS/Annotations/480p --out runs/imported
  # anything else, from a list
  vilocal data import pairs.csv --out runs/imported --test-fraction 0.3
  # then, as on a forged dataset (train on two methods, test on the third):
  vilocal train --data runs/imported --methods vi,op --stage both
  vilocal evaluate --model CKPT --data runs/imported --split test"""


def _register_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import an existing forged dataset (method folders or a list)",
                       description=IMPORT_DESCRIPTION, epilog=IMPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="folder of method folders, or a CSV / JSON / JSONL list")
    p.add_argument("--out", required=True, help="new dataset folder (must not hold a manifest yet)")
    p.add_argument("--masks", metavar="DIR", help="folder of per-sequence mask folders shared by every method")
    p.add_argument("--methods", help="import only these methods (comma-separated)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="share of SOURCE videos in the test split, unless the list gives split (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split hash (default 0)")
    storage = p.add_mutually_exclusive_group()
    storage.add_argument("--copy", action="store_true", help="copy the files into OUT (default: hard links)")
    storage.add_argument("--reference", action="store_true",
                         help="reference the files in place, even where hard links would work")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


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


def run_import(args: argparse.Namespace) -> int:
    from vilocal_dist.data.importer import ImportProblems, import_dataset

    if not 0.0 <= args.test_fraction <= 1.0:
        raise ConfigError(f"--test-fraction must be in [0, 1], got {args.test_fraction}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    mode = "copy" if args.copy else "reference" if args.reference else "link"
    try:
        summary = import_dataset(args.source, args.out, masks=args.masks, mode=mode, test_fraction=args.test_fraction,
                                 seed=args.seed, methods=methods, progress=sys.stderr.isatty())
    except ImportProblems as exc:
        print(f"vilocal: error: {args.source}: {exc.problem}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    _log_import(args, summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"imported {summary['videos']} videos ({summary['frames']} frames, {summary['sources']} source videos) "
          f"into {summary['out']}")
    print(f"  methods: {', '.join(f'{m} {n}' for m, n in summary['methods'].items())}")
    print(f"  splits: train {summary['splits']['train']}, test {summary['splits']['test']} videos")
    print(f"  storage: {', '.join(f'{k} {n}' for k, n in summary['storage'].items())}; "
          f"{summary['empty_mask_frames']} frames with an empty mask")
    empty = [split for split, n in summary["splits"].items() if n == 0]
    if empty:
        print(f"  note: the {empty[0]} split is empty (raise or lower --test-fraction, or give split in a list)")
    return 0


def _log_import(args: argparse.Namespace, summary: dict) -> None:
    """The import as the producing run of its dataset (``vilocal-forge``, tag ``vilocal.kind=import``),
    so train and evaluate runs on it link back to it as they do to a forge."""
    import mlflow

    from vilocal_dist.tracking.lineage import log_dataset_output
    from vilocal_dist.tracking.runs import log_json, mlflow_run

    params = {"source": str(Path(args.source).resolve()), "out": summary["out"], "masks": args.masks,
              "copy": args.copy, "reference": args.reference, "test_fraction": args.test_fraction, "seed": args.seed,
              "methods": args.methods}  # fmt: skip
    with mlflow_run("vilocal-forge", f"import-{Path(summary['out']).name}", params=params,
                    tags={"vilocal.kind": "import"}) as run:
        mlflow.log_metrics({"import/videos": summary["videos"], "import/frames": summary["frames"],
                            "import/sources": summary["sources"]})  # fmt: skip
        log_json(summary, "import_summary.json")
        log_dataset_output(run.info.run_id, summary["out"])


def run(args: argparse.Namespace) -> int:
    return {"inspect": run_inspect, "compose": run_compose, "import": run_import}[args.data_command](args)
