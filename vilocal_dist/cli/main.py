"""`vilocal` entry point: a thin dispatcher over one module per subcommand.

Each module in ``SUBCOMMANDS`` exposes ``register(subparsers)``, which adds its parser and
sets ``func=run`` where ``run(args) -> int`` is the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from vilocal_dist import __version__, console
from vilocal_dist.errors import VilocalError
from vilocal_dist.tracking.setup import home_dir

#: Subcommand modules under vilocal_dist.cli, in --help order.
SUBCOMMANDS: tuple[str, ...] = ("demo", "data", "inpaint", "forge", "sweep", "experiment", "train", "detect", "evaluate", "bench", "tracking")
#: Commands that run long enough to get phase lines, progress bars and a full log file.
LONG_COMMANDS = frozenset({"demo", "forge", "sweep", "experiment", "train", "inpaint"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vilocal",
        description=(
            "Video inpainting forensics on Ray: manufacture forged videos with per-video "
            "inpainting, train the ViLocal detector (stage 1 contrastive, stage 2 focal), "
            "localize inpainted regions, sweep hyperparameters; everything logged to MLflow."
        ),
        epilog="Run `vilocal COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"vilocal_dist {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show everything: debug logging, Ray Tune's trial tables, Ray worker output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"vilocal_dist.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # MLflow writes a telemetry file on import unless told not to; nothing here should phone home.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    parser = build_parser()
    args = parser.parse_args(argv)
    long = args.command in LONG_COMMANDS
    log_file = console.setup(args.command, args.verbose, home_dir() / "logs" if long else None)
    machine_readable = getattr(args, "json", False) or getattr(args, "show_config", False)
    if log_file is not None and not machine_readable:  # --json / --show-config: stdout stays parseable
        print(f"vilocal {args.command} · full log: {log_file}", flush=True)
    try:
        return int(args.func(args) or 0)
    except VilocalError as exc:
        # User-fixable problem: one line naming the file and the problem, no traceback. Wrapped
        # library messages (YAML parser, torch.load) span lines: fold them into the one line.
        print(f"vilocal: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vilocal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
