"""Delivering MLflow spools later, and saying what a spool holds that the server lacks.

A spool (see :mod:`vilocal_dist.tracking.spool`) is ``mlflow-spool/<run id>.jsonl``; every record
names its run and tracking URI, so ``sync`` needs nothing but the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from vilocal_dist.tracking.spool import SPOOL_DIRNAME, RunLog, read_spool

_SHOWN_STEPS = 8


@dataclass(frozen=True)
class SyncResult:
    """One spool after a delivery attempt."""

    spool: Path
    run_id: str
    uri: str
    delivered: int  # records the server took now
    pending: int  # records still in the spool
    error: str = ""  # the last error, when something is pending


def find_spools(roots: Iterable[str | Path]) -> list[Path]:
    """Every ``mlflow-spool/<run id>.jsonl`` under ``roots`` (a root may itself be a spool folder)."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if root.is_dir():
            found.update(p.resolve() for p in root.rglob("*.jsonl") if p.parent.name == SPOOL_DIRNAME)
    return sorted(found)


def sync(roots: Iterable[str | Path], uri: str | None = None, within_s: float = 0.0) -> list[SyncResult]:
    """Replay every spool under ``roots`` into its run (at ``uri``, default: the URI it was logged to)."""
    results = []
    for path in find_spools(roots):
        records = read_spool(path)
        run_uri = uri or (records[0]["uri"] if records else "")
        runlog = RunLog(path.stem, run_uri, path)
        runlog.flush(within_s)
        left = len(runlog.pending())
        results.append(SyncResult(path, path.stem, run_uri, len(records) - left, left, runlog.last_error if left else ""))
    return results


def describe(records: Sequence[dict[str, Any]]) -> str:
    """What spooled ``records`` hold, in words: metric keys and steps, params, tags, artifacts, status."""
    parts = []
    rows = [row for r in records if r["op"] == "metrics" for row in r["metrics"]]
    if rows:
        keys = sorted({key for key, *_ in rows})
        steps = sorted({step for *_, step in rows})
        shown = ", ".join(map(str, steps)) if len(steps) <= _SHOWN_STEPS else f"{steps[0]} … {steps[-1]}"
        parts.append(f"{len(rows)} metric values of {', '.join(keys)} at {len(steps)} step(s) ({shown})")
    params = {k for r in records if r["op"] == "params" for k in r["params"]}
    if params:
        parts.append(f"{len(params)} params")
    tags = sorted({k for r in records if r["op"] == "tags" for k in r["tags"]})
    if tags:
        parts.append(f"tags {', '.join(tags)}")
    files = [name for r in records if r["op"] == "artifacts" for name in _artifact_files(r)]
    if files:
        parts.append(f"artifacts {', '.join(files)}")
    statuses = [r["status"] for r in records if r["op"] == "status"]
    if statuses and statuses[-1] != "RUNNING":
        parts.append(f"the run's end status {statuses[-1]} (the server still shows the run RUNNING)")
    elif statuses:
        parts.append("the run's reopening (RUNNING)")
    return "; ".join(parts) or "nothing"


def _artifact_files(record: dict[str, Any]) -> list[str]:
    folder = Path(record["dir"])
    prefix = f"{record['path'].rstrip('/')}/" if record.get("path") else ""
    if not folder.is_dir():
        return [f"{prefix}(missing staged folder {folder})"]
    return sorted(prefix + p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
