"""`vilocal experiment NAME`: re-run a published protocol on Ray and show its table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vilocal_dist.experiments.registry import EXPERIMENTS, TINY_SUFFIX


def register(subparsers: argparse._SubParsersAction) -> None:
    listing = "\n".join(f"  {name:<16} {info.title}" for name, info in EXPERIMENTS.items())
    p = subparsers.add_parser(
        "experiment",
        help="re-run a paper's protocol (generalization, compression, ablation, inpaint-quality)",
        description=(
            "Re-run one of the papers' protocols end to end: forge the videos (Ray Tune fan-out), train\n"
            "the detectors (Ray Train), score every condition (Ray tasks), and record it in MLflow\n"
            "(experiment vilocal-NAME: a parent run with table.csv, table.md and plots, a child run per\n"
            "condition). Config: sweeps/experiments/NAME.yaml (paper scale) < NAME-tiny.yaml (--tiny)\n"
            "< --config < --set. Forged data and trained detectors are cached by content in the\n"
            "workdir, so protocols share them and a rerun continues where an interrupted one stopped.\n\n"
            "experiments:\n" + listing
        ),
        epilog=(
            "examples:\n"
            "  vilocal experiment generalization --tiny\n"
            "  vilocal experiment compression --tiny --set crfs=[18,23,40]\n"
            "  vilocal experiment ablation --set workers=8 --set eval.gpus=0.5\n"
            "  vilocal experiment inpaint-quality --tiny --show-config"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = list(EXPERIMENTS) + [name + TINY_SUFFIX for name in EXPERIMENTS]
    p.add_argument("name", choices=names, metavar="NAME", help="experiment: " + ", ".join(EXPERIMENTS)
                   + f" (NAME{TINY_SUFFIX} = NAME --tiny)")
    p.add_argument("--tiny", action="store_true", help="the small laptop/test variant (NAME-tiny.yaml)")
    p.add_argument("--config", type=Path, default=None, metavar="YAML", help="extra YAML merged over the experiment's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, dotted for sections (e.g. --set train.stage1_epochs=2), repeatable")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="cache of forged data and models, and the results (default $VILOCAL_HOME/experiments)")
    p.add_argument("--show-config", action="store_true", help="print the resolved, validated config and exit")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.distributed.tuning import init_ray
    from vilocal_dist.config import parse_sets
    from vilocal_dist.experiments.registry import describe, resolve_config, run_experiment
    from vilocal_dist.tracking.setup import ui_command

    overrides = parse_sets(args.overrides)
    if args.workdir:
        overrides["workdir"] = str(Path(args.workdir).expanduser().resolve())
    spec, _ = resolve_config(args.name, tiny=args.tiny, config=args.config, overrides=overrides)
    if args.show_config:
        print(json.dumps(describe(spec), indent=2))
        return 0
    init_ray(args.address, args.num_cpus)
    result = run_experiment(args.name, tiny=args.tiny, config=args.config, overrides=overrides)
    print(f"\n## {result.name}{' (tiny)' if result.tiny else ''}\n\n{result.markdown}")
    print(f"experiment {result.name!r} finished in {result.seconds:.0f} s")
    print(f"results:    {result.results_dir}")
    print(f"MLflow:     experiment {result.experiment!r}, parent run {result.run_id}")
    print(f"MLflow UI:  {ui_command()}")
    return 0
