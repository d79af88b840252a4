"""`vilocal sweep SPEC.yaml`: a Ray Tune hyperparameter sweep (Optuna TPE + ASHA) from a YAML spec."""

from __future__ import annotations

import argparse
import math


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run a hyperparameter sweep from a YAML spec (sweeps/*.yaml)",
        description=(
            "Run the sweep(s) of SPEC: Optuna TPE (seeded) over the spec's search space, ASHA\n"
            "early stopping when the spec asks for it, one Tune trial per sample. Kinds:\n"
            "vilocal-contrastive (τ; stage 1 + stage 2 per trial), vilocal-focal (α, γ on one\n"
            "shared stage-1 encoder), inpaint-regularizers (an inpainting method's weights, e.g.\n"
            "IIVI λ_a, λ_s, per video, scored by held-out known-pixel PSNR). The whole spec is\n"
            "validated before anything starts.\n"
            "MLflow: a parent run per sweep (best_config.json, results.csv/.md, plots) and a\n"
            "child run per trial. Results live in <storage>/<sweep name>; --resume continues an\n"
            "interrupted sweep without redoing finished trials."
        ),
        epilog=(
            "examples:\n"
            "  vilocal sweep sweeps/demo.yaml\n"
            "  vilocal sweep sweeps/demo.yaml --only demo-lambda --set num_samples=2\n"
            "  vilocal sweep sweeps/vilocal-contrastive.yaml --set data.root=/data/forged --set num_samples=32\n"
            "  vilocal sweep sweeps/vilocal-contrastive.yaml --resume"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", metavar="SPEC.yaml", help="sweep spec (see sweeps/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, dotted and repeatable (num_samples=4, base.stage1_epochs=1, "
                        "search_space.tau.high=0.3); in a multi-sweep file prefix a sub-sweep name to target one")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep (Tuner.restore)")
    p.add_argument("--only", action="append", default=None, metavar="NAME", help="run only this sub-sweep, by key or name (repeatable)")
    p.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop this session after N finished trials (resume later with --resume)")  # fmt: skip
    p.add_argument("--gpus-per-trial", type=float, default=None, metavar="F",
                   help="GPUs per trial of the per-video inpainting sweeps (overrides resources.gpus_per_trial)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    p.set_defaults(func=run)


def _fmt(key: str, value: object) -> str:
    return f"{key}={value:.4g}" if isinstance(value, float) and math.isfinite(value) else f"{key}={value}"


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.cli import checks
    from vilocal_dist.config import parse_sets
    from vilocal_dist.distributed.spec import load_specs
    from vilocal_dist.distributed.sweep import run_specs
    from vilocal_dist.distributed.tuning import init_ray
    from vilocal_dist.paths import resolve_spec
    from vilocal_dist.tracking.setup import ui_command

    specs = load_specs(resolve_spec(args.spec), parse_sets(args.overrides), args.only)  # every sub-sweep, before Ray
    specs = checks.sweep_gpus(specs, args.gpus_per_trial)
    for spec in specs:
        spec.kind.check_inputs(spec)
    checks.sweep_inputs(specs)
    init_ray(args.address, args.num_cpus)
    checks.sweep_resources(specs)  # a trial no node can ever host fails now, not after a hang
    outcomes = run_specs(specs, resume=args.resume, stop_after=args.stop_after)
    for o in outcomes:
        state = "complete" if o.complete else "interrupted (continue with --resume)"
        print(f"sweep {o.name}: {len(o.rows)} trials, {state}; results in {o.path}")
        if o.best is not None:
            keys = ["video", *o.params, o.metric] if "video" in o.best else [*o.params, o.metric]
            print("  best: " + ", ".join(_fmt(k, o.best.get(k)) for k in keys))
    print(f"MLflow: {ui_command()}")
    return 0 if all(o.complete for o in outcomes) else 3
