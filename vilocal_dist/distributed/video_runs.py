"""One MLflow child run per forged video when a Tune trial forges several (a *shard*).

Why: at cluster scale (10,000 (video, method) pairs) one Tune trial per video costs Tune about
as much driver time as the video itself, so large forges give each trial a shard of videos; the
MLflow record stays one run per video, as users compare them.

Why a writer thread: every run costs the store three calls (create with tags, one batch of
params and metrics, end). Made inside Tune's callbacks they would stall the driver's event loop,
and the cluster would idle while the driver catches up. ``on_trial_result`` only puts the record
on a queue; one thread in the driver (a single SQLite writer, as ``tune_mlflow`` explains) writes
runs in order. While the tracking server is away the thread retries the same run every few
seconds (one warning per outage); at the end of the forge it drains what is left for
``final_retry_s`` and names the count it could not deliver (their videos are in the manifest).

Exactly once: a run is written only for a video id with no FINISHED run under the parent yet.
The ids already there are read from the store once per process (a resumed forge, or a retried
shard that reports its finished videos again), so neither a resume nor a retry duplicates a run.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Any, Callable, Mapping

from ray import tune

from vilocal_dist.tracking.runs import flat_params, provenance
from vilocal_dist.tracking.setup import ensure_experiment, tracking_uri
from vilocal_dist.tracking.spool import bounded_http, final_retry_s, is_transient, short_error

log = logging.getLogger(__name__)

#: Figures of the last forge in this process, for benchmarks and the forge summary.
STATS: dict[str, float] = {}
_PAGE = 5000  # runs per search page when reading the ids already logged
#: Learning-curve values of a record's ``history`` logged as stepped metrics (step = iteration).
CURVE_KEYS = ("selfval/psnr", "true/hole_psnr", "seconds")


def _curve_key(key: str) -> str:
    return "curve/" + key.replace("/", "_")


def curve_steps(history: list[Mapping[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """A record's learning curve as (iteration, {``curve/...``: value}) pairs for stepped metrics."""
    out = []
    for point in history:
        values = {_curve_key(k): float(point[k]) for k in CURVE_KEYS
                  if isinstance(point.get(k), (int, float)) and math.isfinite(point[k])}  # fmt: skip
        if values and isinstance(point.get("iteration"), (int, float)):
            out.append((int(point["iteration"]), values))
    return out


def record_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A forged video's numeric metrics and its method's wall time (``method_seconds``)."""
    out = {k: float(v) for k, v in (record.get("metrics") or {}).items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}  # fmt: skip
    if isinstance(record.get("seconds"), (int, float)):
        out["method_seconds"] = float(record["seconds"])
    return out


class VideoRunLogger(tune.Callback):
    """Child runs under ``parent_run_id``, one per video a trial reports.

    ``videos_of(result)`` gives the ``{"record", "seconds"}`` items of a result; ``params_of(job)``
    a video's params; ``jobs_of(trial)`` the jobs of a trial's shard (a shard that fails every
    attempt leaves a FAILED run for each of its videos not forged).
    """

    def __init__(self, *, experiment: str, parent_run_id: str,
                 videos_of: Callable[[Mapping[str, Any]], list[dict[str, Any]]],
                 params_of: Callable[[Mapping[str, Any]], Mapping[str, Any]],
                 jobs_of: Callable[[Any], list[Mapping[str, Any]]], uri: str | None = None) -> None:
        self.uri = tracking_uri(uri)
        self.experiment, self.parent_run_id, self.videos_of = experiment, parent_run_id, videos_of
        self.params_of, self.jobs_of = params_of, jobs_of
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._abandon = threading.Event()  # drain gave up: the thread stops retrying
        self._seen: set[str] = set()  # ids queued by this process (a retried shard reports them again)
        self._done: set[str] = set()  # ids with a FINISHED run in the store
        self._retries: dict[str, int] = {}  # trial id -> Tune restarts so far
        self._stats = {"runs": 0, "write_s": 0.0, "lookup_s": 0.0, "undelivered": 0}

    # Tune pickles callbacks with the experiment: threads, queues and clients stay out of it.
    def __getstate__(self) -> dict[str, Any]:
        keep = ("uri", "experiment", "parent_run_id", "videos_of", "params_of", "jobs_of")
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    # --- Tune hooks (driver's event loop: only queue work here) -----------------------------------

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        jobs = {job["id"]: job for job in self.jobs_of(trial)}
        for item in self.videos_of(result):
            record = item["record"]
            metrics = {"seconds": float(item["seconds"]), "frames": float(record.get("frames", 0))}
            self._put(record["id"], "FINISHED", trial, jobs.get(record["id"], record), metrics | record_metrics(record), "",
                      record.get("history") or [])

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._retries[trial.trial_id] = trial.num_failures

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._retries[trial.trial_id] = trial.num_failures
        error = ""
        if trial.error_file:
            try:
                with open(trial.error_file, encoding="utf-8") as f:
                    error = f.read()[-2000:]
            except OSError:
                pass
        for job in self.jobs_of(trial):
            self._put(job["id"], "FAILED", trial, job, {}, error)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.drain(final_retry_s())

    # --- the writer -------------------------------------------------------------------------------

    def _put(self, vid: str, status: str, trial: Any, job: Mapping[str, Any], metrics: dict[str, float],
             error: str, curve: list[dict[str, float]] | None = None) -> None:
        if vid in self._seen:
            return
        if status == "FINISHED":
            self._seen.add(vid)
        if self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._write_all, name="mlflow-video-runs", daemon=True)
            self._thread.start()
        tags = {"tune.trial_id": trial.trial_id}
        if self._retries.get(trial.trial_id):
            tags["tune.retries"] = str(self._retries[trial.trial_id])
        if error:
            tags["vilocal.error"] = " ".join(error.split())[-4000:]
        now = int(time.time() * 1000)
        assert self._queue is not None
        self._queue.put((vid, status, dict(self.params_of(job)), metrics, tags, now, curve or []))

    def drain(self, within_s: float) -> None:
        """Wait until every queued run is written; give up after ``within_s`` seconds without one
        written (the server is away), naming how many are left. Then stop the thread."""
        if self._thread is None or self._queue is None:
            STATS.update(self._stats)
            return
        self._queue.put(None)
        written, since = self._stats["runs"], time.monotonic()
        while self._thread.is_alive() and time.monotonic() - since < max(within_s, 1.0):
            self._thread.join(timeout=1.0)
            if self._stats["runs"] != written:  # a backlog still moving is not an outage
                written, since = self._stats["runs"], time.monotonic()
        if self._thread.is_alive():
            self._abandon.set()  # a later write could race the backfill of the next run
            self._stats["undelivered"] = self._queue.qsize() + 1
            log.warning("MLflow: %d forged video(s) have no run in %s yet (the tracking server %s is away); their "
                        "videos are in the manifest, and rerunning the same command writes the runs",
                        self._stats["undelivered"], self.experiment, self.uri)
        self._thread = self._queue = None
        STATS.update(self._stats)

    def backfill(self, records: list[dict[str, Any]], jobs: Mapping[str, Mapping[str, Any]]) -> int:
        """Write a run for each listed video of this forge that has none FINISHED: a driver killed
        with runs still queued listed those videos, and its resume will not forge them again.
        Returns how many were written (0 when the server is away: it warns instead)."""
        import mlflow

        try:
            with bounded_http():
                client = mlflow.MlflowClient(tracking_uri=self.uri)
                exp_id = ensure_experiment(self.experiment, self.uri)
                self._done = self._logged_ids(client, exp_id)
                tags = {**provenance(), "mlflow.parentRunId": self.parent_run_id}
                missing = [r for r in records if r["id"] in jobs and r["id"] not in self._done]
                now = int(time.time() * 1000)
                for record in missing:
                    metrics = record_metrics(record)
                    self._write(client, exp_id, tags, record["id"], "FINISHED", dict(self.params_of(jobs[record["id"]])),
                                metrics, {"vilocal.backfilled": "true"}, now, record.get("history") or [])  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - logging never ends a forge
            log.warning("MLflow: could not check the forge's runs against the manifest (%s); rerunning the same "
                        "command does it", short_error(exc))
            return 0
        STATS.update(self._stats)
        STATS["backfilled"] = len(missing)
        return len(missing)

    def _write_all(self) -> None:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=self.uri)
        exp_id: str | None = None
        tags = {**provenance(), "mlflow.parentRunId": self.parent_run_id}
        warned = False
        assert self._queue is not None
        item = self._queue.get()
        while item is not None:
            try:
                with bounded_http():
                    if exp_id is None:
                        exp_id = ensure_experiment(self.experiment, self.uri)
                        self._done = self._logged_ids(client, exp_id)
                    self._write(client, exp_id, tags, *item)
            except Exception as exc:  # noqa: BLE001 - logging never ends a forge
                if not is_transient(exc):
                    log.error("MLflow refused the run of forged video %s (%s); skipping it", item[0], short_error(exc))
                    item = self._queue.get()
                    continue
                if not warned:
                    log.warning("MLflow tracking server %s is not answering (%s); the forge continues and the "
                                "per-video runs wait in memory", self.uri, short_error(exc))
                warned = True
                if self._abandon.wait(2.0):
                    return
                continue  # the same run again
            warned = False
            item = self._queue.get()

    def _logged_ids(self, client: Any, exp_id: str) -> set[str]:
        start = time.perf_counter()
        ids: set[str] = set()
        token = None
        where = f"tags.mlflow.parentRunId = '{self.parent_run_id}' and attributes.status = 'FINISHED'"
        while True:
            page = client.search_runs([exp_id], filter_string=where, max_results=_PAGE, page_token=token)
            ids.update(r.data.tags.get("vilocal.video_id", r.info.run_name) for r in page)
            token = page.token
            if not token:
                break
        self._stats["lookup_s"] += time.perf_counter() - start
        return ids

    def _write(self, client: Any, exp_id: str, base_tags: dict[str, str], vid: str, status: str,
               params: dict[str, Any], metrics: dict[str, float], tags: dict[str, str], ended_ms: int,
               curve: list[dict[str, float]] = ()) -> None:  # type: ignore[assignment]
        from mlflow.entities import Metric, Param

        if vid in self._done:
            return
        start = time.perf_counter()
        run = client.create_run(exp_id, run_name=vid, start_time=ended_ms,
                                tags={**base_tags, **tags, "vilocal.video_id": vid})
        run_id = run.info.run_id
        stepped = [Metric(k, v, ended_ms, step) for step, values in curve_steps(list(curve)) for k, v in values.items()]
        client.log_batch(run_id, metrics=[Metric(k, v, ended_ms, 0) for k, v in metrics.items()] + stepped,
                         params=[Param(k, str(v)) for k, v in flat_params(params).items()])
        client.set_terminated(run_id, status=status, end_time=ended_ms)
        if status == "FINISHED":
            self._done.add(vid)
        self._stats["runs"] += 1
        self._stats["write_s"] += time.perf_counter() - start
