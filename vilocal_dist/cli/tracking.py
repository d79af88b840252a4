"""`vilocal tracking sync`: deliver MLflow records spooled while the tracking server was away."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tracking",
        help="MLflow housekeeping: deliver records spooled while the tracking server was away",
        description=(
            "When the MLflow tracking server is unreachable, training and sweeps carry on and keep\n"
            "what they could not log (metrics, params, tags, artifacts, the run's end status) in\n"
            "spool files: mlflow-spool/<run id>.jsonl, next to a training run's Ray checkpoints\n"
            "(<storage>/<run name>/mlflow-spool/) or under <home>/spool/. `sync` replays every spool\n"
            "it finds, in order, into the run it belongs to, and removes what the server took.\n"
            "Replaying twice stores nothing twice. Rerunning a training run under the same name\n"
            "also replays its spool first."
        ),
        epilog=(
            "examples:\n"
            "  vilocal tracking sync                     # the Ray storage path and <home>/spool\n"
            "  vilocal tracking sync runs/ray/demo-stage1 --wait 120\n"
            "  vilocal tracking sync DIR --tracking-uri http://mlflow:5000   # a moved server"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sync = actions.add_parser("sync", help="replay spooled MLflow records into their runs")
    sync.add_argument("folders", nargs="*", type=Path, metavar="DIR",
                      help="folders searched for mlflow-spool/*.jsonl (default: the Ray storage path and <home>/spool)")
    sync.add_argument("--tracking-uri", default=None, metavar="URI",
                      help="deliver to this server instead of the one each record was logged to")
    sync.add_argument("--wait", type=float, default=0.0, metavar="S",
                      help="keep trying an unreachable server for up to S seconds per spool (default 0: once)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.errors import ConfigError
    from vilocal_dist.tracking.setup import home_dir, storage_path
    from vilocal_dist.tracking.sync import sync

    if args.wait < 0:
        raise ConfigError(f"--wait must be >= 0, got {args.wait}")
    folders = args.folders
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError("no such folder", folder)
    if not folders:
        storage = storage_path()
        candidates = [home_dir() / "spool"] + ([] if "://" in storage else [Path(storage)])
        folders = [f for f in candidates if f.is_dir()]
    results = sync(folders, uri=args.tracking_uri, within_s=args.wait)
    if not results:
        print(f"tracking sync: nothing to deliver under {', '.join(map(str, folders))}")
        return 0
    for r in results:
        if r.pending:
            print(f"  {r.spool}: {r.delivered} delivered, {r.pending} still pending for run {r.run_id} at {r.uri}"
                  f" ({r.error})")
        else:
            print(f"  {r.spool}: all {r.delivered} records delivered to run {r.run_id} at {r.uri}")
    left = sum(r.pending for r in results)
    print(f"tracking sync: {len(results)} spool(s), {sum(r.delivered for r in results)} records delivered, "
          f"{left} pending")
    return 1 if left else 0
