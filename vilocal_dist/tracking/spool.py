"""Logging into one MLflow run that survives the tracking server going away.

``RunLog`` sends metric batches, params, tags, artifact folders and status changes of one run
through ``MlflowClient``. When the server is unreachable or answers 5xx/429, the record is
appended to a local *spool* (JSON lines, flushed and fsynced one record at a time) and the caller
carries on; one warning per outage names the server, the spool and that work continues. The
next call first replays the spool in order, then removes it ("MLflow server back: N batches
replayed"). Errors the server gives for a bad request (4xx) are raised: they are bugs, not outages.

Replaying is idempotent: metrics keep their original timestamps, and the tracking store drops a
metric identical in (key, value, timestamp, step), so a record sent just before a crash and
replayed again is stored once; tags, params, artifacts and status are plain overwrites.

Where: one file per run, ``<run id>.jsonl`` in a ``mlflow-spool`` folder, for training runs next
to their Ray checkpoints (``<storage path>/<ray run name>/mlflow-spool/``; with remote storage,
``<home>/spool/<ray run name>/mlflow-spool/``). Artifact folders waiting for the server are copied
beside it (``<run id>.files/``). ``sync`` (``vilocal tracking sync``) delivers every spool under a
folder later.

MLflow's own HTTP client retries with exponential backoff for minutes (7 retries, backoff factor
2, 120 s timeout); ``bounded_http`` cuts that to one try with a 5 s timeout around our calls, so
an outage costs an epoch at most one short attempt, and nothing while ``probe_every_s`` has not
passed since the last failure.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from vilocal_dist.storage import atomic_write_text, fsync_path
from vilocal_dist.tracking.setup import home_dir, storage_path

log = logging.getLogger(__name__)

SPOOL_DIRNAME = "mlflow-spool"
#: How long the driver keeps trying to deliver a run's final records (overridden per call).
RETRY_ENV = "VILOCAL_MLFLOW_RETRY_S"
_MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
_MAX_TAGS_PER_BATCH = 100
T = TypeVar("T")


@dataclass(frozen=True)
class DeliveryConfig:
    """How hard to try the tracking server before spooling.

    ``http_retries``/``http_timeout_s`` bound one MLflow HTTP call (connection refused: at once; a
    hung server: ``(1 + http_retries) * http_timeout_s``). No retries by default: a record that
    fails once is spooled and replayed by the next call, which is this layer's retry.
    ``probe_every_s``: while the server is down, records go straight to the spool until this long
    after the last failure.
    """

    http_retries: int = 0
    http_timeout_s: int = 5
    probe_every_s: float = 5.0


def final_retry_s(explicit: float | None = None) -> float:
    """Seconds to keep trying at the end of a run: ``explicit`` > ``$VILOCAL_MLFLOW_RETRY_S`` > 60."""
    return float(explicit if explicit is not None else os.environ.get(RETRY_ENV, 60))


@contextmanager
def bounded_http(config: DeliveryConfig = DeliveryConfig()) -> Iterator[None]:
    """MLflow HTTP calls in this block give up after a few seconds (MLflow reads these per call)."""
    bounds = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(config.http_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(config.http_timeout_s),
    }
    saved = {key: os.environ.get(key) for key in bounds}
    os.environ.update(bounds)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means "the server is not there right now" (no answer, 5xx, 429)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):  # connection failures arrive as INTERNAL_ERROR (500)
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(exc, OSError)  # requests' ConnectionError/Timeout are OSErrors


def call_with_retry(fn: Callable[[], T], within_s: float, config: DeliveryConfig = DeliveryConfig()) -> T:
    """``fn()`` with bounded HTTP, retried on transient errors for up to ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with bounded_http(config):
                return fn()
        except Exception as exc:
            left = deadline - time.monotonic()
            if not is_transient(exc) or left <= 0:
                raise
            time.sleep(min(config.probe_every_s, left))


def spool_dir(run_name: str) -> Path:
    """The spool folder of Ray run ``run_name``: beside its checkpoints when storage is local."""
    storage = storage_path()
    base = home_dir() / "spool" / run_name if "://" in storage else Path(storage) / run_name
    return base / SPOOL_DIRNAME


def short_error(exc: BaseException, limit: int = 240) -> str:
    """The gist of an MLflow/requests error: the OS's reason for a failed connection, else urllib3's
    cause (e.g. a connection the server dropped), else the text, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    if reason:
        return reason.group(1).strip()
    if "(Caused by " in text:
        text = text.split("(Caused by ", 1)[1].removesuffix(")")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Outage:
    """Whether a tracking server is away, shared by the ``RunLog``s writing to it: one warning per
    outage for all of them, and none tries the server again until ``probe_every_s`` has passed."""

    def __init__(self) -> None:
        self.failed_at: float | None = None  # monotonic time of the last failure; None: server up

    def report(self, message: str, *args: Any) -> None:
        """Note a failure now; log ``message`` only when this starts an outage."""
        if self.failed_at is None:
            log.warning(message, *args)
        self.failed_at = time.monotonic()


class RunLog:
    """Records of MLflow run ``run_id`` at ``uri``: sent now, or spooled to ``spool`` and replayed.

    Every logging method returns True when the record reached the server now, False when it was
    spooled. ``activity`` names what continues during an outage ("training", "the sweep");
    ``outage`` is shared by the RunLogs of one server (default: this RunLog's own).
    """

    def __init__(self, run_id: str, uri: str, spool: Path, *, config: DeliveryConfig = DeliveryConfig(),
                 activity: str = "training", outage: Outage | None = None) -> None:
        self.run_id, self.uri, self.path = run_id, uri, Path(spool)
        self.config, self.activity = config, activity
        self.outage = outage or Outage()
        self.last_error = ""
        self._refused = False  # the server rejected a spooled record: stop replaying, keep spooling
        self._client: Any = None

    # --- what callers log -------------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> bool:
        """One batch of finite ``metrics`` at ``step`` (non-finite values are dropped), stamped now."""
        now = int(time.time() * 1000)
        rows = [[k, float(v), now, int(step)] for k, v in metrics.items() if math.isfinite(float(v))]
        return self._submit({"op": "metrics", "metrics": rows}) if rows else True

    def log_params(self, params: Mapping[str, str]) -> bool:
        return self._submit({"op": "params", "params": {k: str(v) for k, v in params.items()}}) if params else True

    def set_tags(self, tags: Mapping[str, str]) -> bool:
        return self._submit({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}}) if tags else True

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> bool:
        """Upload ``folder``'s contents (under ``artifact_path``); copied into the spool if down."""
        return self._submit({"op": "artifacts", "dir": str(Path(folder).resolve()), "path": artifact_path})

    def set_status(self, status: str) -> bool:
        """RUNNING (reopen), or a terminal status (FINISHED, FAILED, KILLED) with its end time now."""
        return self._submit({"op": "status", "status": status, "end_time": int(time.time() * 1000)})

    def flush(self, within_s: float = 0.0) -> bool:
        """Replay the spool, trying for up to ``within_s`` seconds; True when nothing is left."""
        deadline = time.monotonic() + within_s
        while True:
            if self._replay():
                return True
            left = deadline - time.monotonic()
            if self._refused or left <= 0:
                return False
            time.sleep(min(self.config.probe_every_s, left))

    def pending(self) -> list[dict[str, Any]]:
        """The spooled records, oldest first (a line torn by a crash mid-write is skipped)."""
        return read_spool(self.path)

    def write_note(self, text: str) -> Path:
        """A human-readable note beside the spool (``<run id>.gap.txt``), removed on delivery."""
        note = self.path.with_suffix(".gap.txt")
        atomic_write_text(note, text.rstrip() + "\n")
        return note

    # --- delivery ---------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.uri)
        return self._client

    def _submit(self, record: dict[str, Any]) -> bool:
        record = {**record, "run_id": self.run_id, "uri": self.uri}
        if self._resting() or not self._replay():  # keep order: nothing overtakes the spool
            self._append(record)
            return False
        try:
            self._send(record)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._outage(exc)
            self._append(record)
            return False
        self.outage.failed_at = None
        return True

    def _resting(self) -> bool:
        if self._refused:
            return True
        failed_at = self.outage.failed_at
        return failed_at is not None and time.monotonic() - failed_at < self.config.probe_every_s

    def _send(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        op, client = record["op"], self.client
        with bounded_http(self.config):
            if op == "metrics":
                rows = [Metric(k, v, ts, step) for k, v, ts, step in record["metrics"]]
                for i in range(0, len(rows), _MAX_METRICS_PER_BATCH):
                    client.log_batch(self.run_id, metrics=rows[i : i + _MAX_METRICS_PER_BATCH])
            elif op in ("params", "tags"):
                kind = Param if op == "params" else RunTag
                items = [kind(k, v) for k, v in record[op].items()]
                for i in range(0, len(items), _MAX_TAGS_PER_BATCH):
                    client.log_batch(self.run_id, **{op: items[i : i + _MAX_TAGS_PER_BATCH]})
            elif op == "artifacts":
                client.log_artifacts(self.run_id, record["dir"], artifact_path=record["path"])
            elif op == "status" and record["status"] == "RUNNING":
                client.update_run(self.run_id, status="RUNNING")
            elif op == "status":
                client.set_terminated(self.run_id, status=record["status"], end_time=record["end_time"])
            else:
                raise ValueError(f"{self.path}: unknown spool record {op!r}")

    def _replay(self) -> bool:
        if self._refused:
            return False
        if not self.path.exists():
            return True
        records = self.pending()
        for done, record in enumerate(records):
            try:
                self._send(record)
            except Exception as exc:
                if is_transient(exc):
                    self._outage(exc)
                else:
                    self._refuse(exc, record)
                if done:
                    atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records[done:]))
                return False
        self._remove()
        if records:
            log.warning("MLflow server back: %d batches replayed into run %s (%s) from %s",
                        len(records), self.run_id, self.uri, self.path)
        self.outage.failed_at = None
        return True

    def _outage(self, exc: BaseException) -> None:
        self.last_error = short_error(exc)
        self.outage.report(
            "MLflow tracking server %s is not answering (%s). %s continues: what run %s logs is kept in %s "
            "and replayed, in order, once the server is back (or later with `vilocal tracking sync %s`).",
            self.uri, self.last_error, self.activity[:1].upper() + self.activity[1:], self.run_id, self.path,
            self.path.parent)

    def _refuse(self, exc: BaseException, record: dict[str, Any]) -> None:
        self.last_error = short_error(exc)
        self._refused = True
        log.error("MLflow tracking server %s refused a spooled %s record of run %s (%s). Nothing is dropped: "
                  "%s keeps it and what follows; fix the cause (a deleted run? another server?) and run "
                  "`vilocal tracking sync %s`.", self.uri, record["op"], self.run_id, self.last_error, self.path,
                  self.path.parent)

    # --- the spool file ---------------------------------------------------------------------------

    def _append(self, record: dict[str, Any]) -> None:
        if record["op"] == "artifacts":  # the caller's folder is usually temporary: keep a copy
            staged = self.path.with_suffix(".files") / uuid.uuid4().hex[:12]
            shutil.copytree(record["dir"], staged)
            record = {**record, "dir": str(staged)}
        record = {**record, "spooled_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if new:  # the file's directory entry must survive a crash too
            fsync_path(self.path.parent)

    def _remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".gap.txt").unlink(missing_ok=True)
        shutil.rmtree(self.path.with_suffix(".files"), ignore_errors=True)
        try:
            self.path.parent.rmdir()  # only when no other run's spool is left there
        except OSError:
            pass


def read_spool(path: Path) -> list[dict[str, Any]]:
    """Records of a spool file, oldest first; a torn (crash-interrupted) line is skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("%s:%d: skipping a torn spool line (a crash while writing it)", path, number)
    return records
