"""`vilocal bench`: the benchmark suite (training step, detection, inpainting, fan-out, decode)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vilocal_dist.errors import ConfigError

NAMES = ("model", "detect", "inpaint", "fanout", "decode", "scale")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark suite: training step, detection, inpainting, fan-out, decode (JSON + table)",
        description=(
            "Run the benchmarks, each measurement in its own subprocess so peak-memory numbers do not\n"
            "contaminate each other:\n"
            "  model    stage-1 training step time and peak memory per preset and batch size\n"
            "  detect   detection frames/s and peak memory, 30 vs 300 frames (untrained model)\n"
            "  inpaint  frames/s or iterations/s per inpainting method (shared interface)\n"
            "  fanout   forging throughput with 1 vs 2 concurrent Tune trials, per-trial overhead\n"
            "  decode   decode frames/s and streaming peak memory of a 480p H.264 file\n"
            "  scale    forge fan-out at 100 to 10,000 videos (only with --only scale: an hour or more)\n"
            "Wall times on a shared machine depend on its load (reported beside them)."
        ),
        epilog="examples:\n  vilocal bench --quick --json\n  vilocal bench --only model,detect --device cuda --out bench.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", default=None, metavar="A,B", help=f"comma-separated subset of: {', '.join(NAMES)}")
    p.add_argument("--quick", action="store_true", help="a fast smoke version (tiny models and videos)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where models run (default auto: CUDA when available)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (no table)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the JSON to FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.bench.suite import run_suite, summary_lines

    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    unknown = [n for n in only or [] if n not in NAMES]
    if unknown:
        raise ConfigError(f"--only: unknown benchmark(s) {unknown}; known: {', '.join(NAMES)}")
    announce = None if args.json else (lambda name: print(f"running {name} …", file=sys.stderr, flush=True))
    result = run_suite(only, quick=args.quick, device=args.device, progress=announce)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.out)
    if args.json:
        print(text)
    else:
        print("\n".join(summary_lines(result)))
    return 1 if result["errors"] else 0
