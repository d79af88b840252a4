"""`vilocal demo`: the main job end to end on built-in composed videos."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole system once on built-in data (forge → train → evaluate → sweep)",
        description=(
            "Composes videos from scikit-image photographs, forges them with several inpainting "
            "methods through the Ray Tune fan-out, trains ViLocal (stage 1 contrastive, stage 2 focal) "
            "on Ray Train, evaluates per method on held-out videos (seen and unseen methods), runs a "
            "tiny Optuna sweep, and records everything in MLflow. Prints a summary table and the "
            "command that opens the MLflow UI. The default preset takes about 15 minutes on 2 CPU cores."
        ),
    )
    p.add_argument("--preset", default="default", help="default (laptop, ~15 min) or smoke (~2 min, for CI)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: $VILOCAL_HOME/demo, i.e. ./runs/demo)")
    p.add_argument("--name", default=None, help="run name (default: demo-<preset>); rerunning the same name resumes")
    p.add_argument("--workers", type=int, default=None, help="Ray Train workers (default from the preset)")
    p.add_argument("--sweep", choices=("lambda", "tau", "none"), default=None, help="which demo sweep to run")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the preset's spec (sweeps/experiments/demo-PRESET.yaml), dotted for "
                        "sections, repeatable (e.g. --set train.stage1_epochs=2)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.config import parse_sets
    from vilocal_dist.experiments.demo import resolve_preset, run_demo
    from vilocal_dist.tracking.setup import home_dir

    flags = {"workers": args.workers, "sweep": args.sweep}
    overrides = {**{k: v for k, v in flags.items() if v is not None}, **parse_sets(args.overrides)}
    spec = resolve_preset(args.preset, overrides)
    name = args.name or f"demo-{args.preset}"
    out = args.out or home_dir() / name
    run_demo(spec, out, name=name)
    return 0
