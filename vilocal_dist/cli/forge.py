"""`vilocal forge`: build a forged-video dataset, one Ray Tune trial per (video, method)."""

from __future__ import annotations

import argparse
from typing import Any

from vilocal_dist.cli.args import parse_size
from vilocal_dist.config import apply_sets, parse_sets
from vilocal_dist.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "forge",
        help="forge a dataset: inpaint every (video, method) pair as a Ray Tune trial",
        description=(
            "Remove the masked objects of every source video with every method and store each\n"
            "result (lossless PNG frames, mask, provenance record) in the forged dataset OUT.\n"
            "One Tune trial per (video, method); a video enters OUT/manifest.jsonl only once it\n"
            "is complete. Train/test splits are assigned per source video. Rerunning skips what\n"
            "is complete and resumes an interrupted forge (Tuner.restore). MLflow experiment\n"
            "'vilocal-forge': a parent run per forge, a child run per trial."
        ),
        epilog=(
            "examples:\n"
            "  vilocal forge --composed 8 --frames 12 --size 64x112 --methods telea,flowprop --out runs/forged\n"
            "  vilocal forge --sources /data/DAVIS --methods iivi,telea --out forged --gpus-per-trial 0.25 \\\n"
            "      --set iivi.iters_recon=20000 --set iivi.iters_reg=10000\n"
            "  vilocal forge --composed 4 --methods command --out forged \\\n"
            "      --set \"command.template=python /opt/fill.py {frames_dir} {masks_dir} {out_dir}\"\n\n"
            "Methods: see `vilocal inpaint --method list`; `command` runs an external program per video,\n"
            "and installed plugins (entry point group vilocal_dist.inpaint_methods) work like built-ins."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sources", nargs="*", default=[], metavar="SRC",
                   help="DAVIS roots (every sequence), DAVIS sequence folders, video files, composed:SEED[:T[:HxW]]")  # fmt: skip
    p.add_argument("--composed", type=int, default=0, metavar="N", help="add N built-in composed videos (seeds SEED…SEED+N-1)")
    p.add_argument("--frames", type=int, default=24, metavar="T", help="frames per composed video (default 24)")
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW",
                   help="composed video size, and resize of other sources (default: 240x432 composed, native otherwise)")  # fmt: skip
    p.add_argument("--max-frames", type=int, default=0, metavar="T", help="use at most T frames of each source")
    p.add_argument("--methods", required=True, help="comma-separated inpainting methods, e.g. iivi,intervi,telea,ns,flowprop")
    p.add_argument("--out", required=True, metavar="DIR|URI", help="forged dataset folder or storage URI (s3://bucket/forged)")
    p.add_argument("--seed", type=int, default=0, help="method seed, split hash seed, first composed seed (default 0)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="share of source videos in the test split (default 0.25)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial; fractions pack trials on a GPU (e.g. 0.25); the cluster must have or be "
                        "able to start GPU nodes, else it fails at once")  # fmt: skip
    p.add_argument("--max-concurrent", type=int, default=0, help="trials at once (default: what the resources allow)")
    p.add_argument("--retries", type=int, default=2, help="restarts of a failed trial (default 2)")
    p.add_argument("--videos-per-trial", type=int, default=0, metavar="K",
                   help="videos one Tune trial forges in turn (default: 1 for small forges; for large ones enough "
                        "that each concurrent slot runs about 8 trials, at most 50 videos each)")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method option, repeatable (e.g. --set iivi.preset=tiny)")  # fmt: skip
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    p.set_defaults(func=run)


def method_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["iivi.preset=tiny"]`` -> ``{"iivi": {"preset": "tiny"}}`` (the shared ``--set`` syntax)."""
    sets = parse_sets(items)
    for key in sets:
        if "." not in key:
            raise ConfigError(f"--set {key}=…: write METHOD.KEY=VALUE (e.g. iivi.preset=tiny)")
    return apply_sets({}, sets)


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.cli import checks
    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs
    from vilocal_dist.inpaint.registry import check_method_config
    from vilocal_dist.storage import normalize
    from vilocal_dist.tracking.setup import ui_command

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError("--methods names no method")
    if not args.sources and args.composed < 1:
        raise ConfigError("give --sources and/or --composed N")
    if not 0.0 <= args.test_fraction <= 1.0:
        raise ConfigError(f"--test-fraction must be in [0, 1], got {args.test_fraction}")
    if min(args.retries, args.max_concurrent, args.videos_per_trial) < 0 or args.cpus_per_trial <= 0 or args.gpus_per_trial < 0:
        raise ConfigError("--retries, --max-concurrent and --videos-per-trial must be ≥ 0, --cpus-per-trial > 0, "
                          "--gpus-per-trial ≥ 0")
    cfgs = method_overrides(args.overrides)
    for method in methods:
        check_method_config(method, cfgs.get(method))  # every option, before any video is read or Ray starts
    out = checks.output_dir(args.out)
    sources = checks.video_sources(args.sources)  # absolute: trials run in other folders, on other nodes
    videos = expand_sources(sources, composed=args.composed, frames=args.frames, size=args.size or (240, 432), seed=args.seed)
    jobs = plan_jobs(videos, methods, method_cfgs=cfgs, test_fraction=args.test_fraction, seed=args.seed)
    resize = args.size if args.sources else None  # composed videos are generated at --size already
    opts = ForgeOptions(
        out=normalize(out), seed=args.seed, test_fraction=args.test_fraction,
        size_h=resize[0] if resize else 0, size_w=resize[1] if resize else 0, max_frames=args.max_frames,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, retries=args.retries, videos_per_trial=args.videos_per_trial,
    )  # fmt: skip
    summary = forge(jobs, opts, address=args.address, num_cpus=args.num_cpus)
    print(f"forge: {summary.planned} videos planned, {summary.skipped} already complete, "
          f"{summary.ran} forged in this run ({summary.videos_per_trial} per trial), {len(summary.failed)} failed "
          f"-> {opts.out}")  # fmt: skip
    if summary.failed:
        print(f"failed: {', '.join(summary.failed)} (rerun the same command to retry them)")
    if not summary.complete:
        print("interrupted: rerun the same command to continue")
    if summary.ran:
        print(f"MLflow: {ui_command()}")
    return 1 if summary.failed else (0 if summary.complete else 3)
