"""A driver-side Tune callback that records every trial as an MLflow child run.

Why in the driver: trials run in parallel worker processes, and many SQLite writers at once give
"database is locked". Tune calls its callbacks in the driver, one event at a time, so every
MLflow write here comes from a single process; the same code works unchanged against a tracking
server on a cluster.

Each trial gets a child run (tag ``mlflow.parentRunId``) holding its params, every reported
result as a metric step (``training_iteration``), ``config.json`` and, at the end,
``result.json``. A run always ends: FINISHED when the trial completes (ASHA-stopped trials
included), FAILED on error, KILLED when the experiment is interrupted; a resumed trial reopens
its run (the trial → run map is part of the callback state Tune checkpoints).

The tracking server going away never ends a sweep: every hook is guarded (one warning per outage),
and the records of runs that exist already (metrics, params, tags, artifacts, status) wait in a
spool (``<home>/spool/sweep-<parent run id>/mlflow-spool/``) and are replayed once the server
answers, or later with ``vilocal tracking sync``. A trial that starts while the server is away gets
its run at its next event; what it reported before that is not in MLflow (Tune keeps it).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from ray import tune

from vilocal_dist.tracking.runs import flat_params, flatten, provenance
from vilocal_dist.tracking.setup import ensure_experiment, home_dir, tracking_uri
from vilocal_dist.tracking.spool import (
    SPOOL_DIRNAME,
    DeliveryConfig,
    Outage,
    RunLog,
    bounded_http,
    is_transient,
    short_error,
)
from vilocal_dist.tracking.sync import describe

log = logging.getLogger(__name__)

#: Tune's own bookkeeping keys: not metrics of the trial.
_TUNE_KEYS = frozenset({
    "training_iteration", "timestamp", "time_this_iter_s", "pid", "date", "hostname", "node_ip",
    "time_since_restore", "iterations_since_restore", "done", "trial_id", "experiment_tag",
    "checkpoint_dir_name", "should_checkpoint", "config",
})


def numeric_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric user metrics of a Tune result (bools and Tune's bookkeeping dropped)."""
    out = {}
    for key, value in flatten(result).items():
        if key in _TUNE_KEYS or key.startswith("config."):
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


class MLflowTrialLogger(tune.Callback):
    """Child run per Tune trial under ``parent_run_id`` in ``experiment`` (see module docstring).

    ``params_of(config) -> dict`` picks what to log as params (default: the flattened config);
    ``run_name_of(trial) -> str`` names the child run (default: the trial's name);
    ``spool_dir``: where records wait while the server is away (default under ``<home>/spool``);
    ``delivery``: how hard to try the server before spooling; ``stepped_of(result)``: further
    metrics a result carries as (step, {name: value}) pairs, e.g. a learning curve inside it.
    """

    def __init__(
        self,
        *,
        experiment: str,
        parent_run_id: str,
        uri: str | None = None,
        params_of: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
        run_name_of: Callable[[Any], str] | None = None,
        tags: Mapping[str, str] | None = None,
        spool_dir: str | Path | None = None,
        delivery: DeliveryConfig = DeliveryConfig(),
        stepped_of: Callable[[Mapping[str, Any]], list[tuple[int, dict[str, float]]]] | None = None,
    ) -> None:
        self.uri = tracking_uri(uri)
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.params_of = params_of
        self.run_name_of = run_name_of
        self.tags = {**provenance(), **(tags or {})}
        self.spool_dir = Path(spool_dir or home_dir() / "spool" / f"sweep-{parent_run_id}" / SPOOL_DIRNAME)
        self.delivery = delivery
        self.stepped_of = stepped_of
        self.runs: dict[str, str] = {}  # trial_id -> MLflow run id
        self._client: Any = None
        self._logs: dict[str, RunLog] = {}  # run id -> its RunLog
        self._outage = Outage()  # one warning per outage, for every run of the sweep
        self._running: set[str] = set()  # run ids reopened as RUNNING by this process

    # Tune pickles callbacks with the experiment: keep clients and per-process state out of the pickle.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_logs": {}, "_outage": Outage(), "_running": set()}

    @property
    def client(self) -> Any:
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.uri)
        return self._client

    def get_state(self) -> dict[str, Any]:
        return {"runs": dict(self.runs)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.runs.update(state.get("runs", {}))

    # --- helpers ---------------------------------------------------------------------------------

    def _runlog(self, run_id: str) -> RunLog:
        if run_id not in self._logs:
            self._logs[run_id] = RunLog(run_id, self.uri, self.spool_dir / f"{run_id}.jsonl",
                                        config=self.delivery, activity="the sweep", outage=self._outage)
        return self._logs[run_id]

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        """Run one hook's MLflow work; a failure is reported (once per outage), never raised."""
        try:
            with bounded_http(self.delivery):
                fn()
        except Exception as exc:  # noqa: BLE001 - logging must never end a sweep
            detail = "" if is_transient(exc) else " (not an outage: a bug or a misconfigured server?)"
            self._outage.report(
                "MLflow: %s failed against %s (%s)%s. The sweep continues; records of runs that exist wait "
                "in %s until the server answers (or `vilocal tracking sync %s`).",
                what, self.uri, short_error(exc), detail, self.spool_dir, self.spool_dir)

    def _open(self, trial: Any) -> str:
        """The trial's run id, creating the run (with params) or reopening it as RUNNING."""
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            if run_id not in self._running:
                self._runlog(run_id).set_status("RUNNING")
                self._running.add(run_id)
            return run_id
        exp_id = ensure_experiment(self.experiment, self.uri)
        name = self.run_name_of(trial) if self.run_name_of else str(trial)
        tags = {**self.tags, "mlflow.parentRunId": self.parent_run_id, "tune.trial_id": trial.trial_id}
        run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        self.runs[trial.trial_id] = run_id
        self._running.add(run_id)
        params = self.params_of(trial.config) if self.params_of else trial.config
        self._runlog(run_id).log_params(flat_params(params))
        self._log_text(run_id, json.dumps(dict(params), indent=2, sort_keys=True, default=str), "config.json")
        return run_id

    def _log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / name).write_text(text)
            self._runlog(run_id).log_artifacts(folder)

    def _close(self, trial: Any, status: str) -> None:
        run_id = self._open(trial)  # one that failed before it ever started still leaves a record
        runlog = self._runlog(run_id)
        if trial.last_result:
            last = {k: v for k, v in trial.last_result.items() if k != "config"}
            self._log_text(run_id, json.dumps(last, indent=2, sort_keys=True, default=str), "result.json")
        # trial.status still reads RUNNING inside these hooks: record the outcome Tune is giving it.
        runlog.set_tags({"tune.status": "TERMINATED" if status == "FINISHED" else "ERROR"})
        runlog.set_status(status)
        self._running.discard(run_id)

    # --- Tune hooks ------------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard(f"starting the run of trial {trial.trial_id}", lambda: self._open(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        def log_result() -> None:
            step = int(result.get("training_iteration", 0))
            runlog = self._runlog(self._open(trial))
            runlog.log_metrics(numeric_metrics(result), step)
            for at, values in self.stepped_of(result) if self.stepped_of else ():
                runlog.log_metrics(values, at)

        self._guard(f"logging a result of trial {trial.trial_id}", log_result)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard(f"tagging the retry of trial {trial.trial_id}",
                    lambda: self._runlog(self._open(trial)).set_tags({"tune.retries": str(trial.num_failures)}))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guard(f"ending the run of trial {trial.trial_id}", lambda: self._close(trial, "FINISHED"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        def close_failed() -> None:
            self._close(trial, "FAILED")
            # The trace sits in the driver's staging copy of the trial folder until the next sync.
            error_file = trial.error_file
            if error_file and Path(error_file).is_file():
                self._log_text(self.runs[trial.trial_id], Path(error_file).read_text()[-20_000:], "error.txt")

        self._guard(f"ending the failed run of trial {trial.trial_id}", close_failed)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        def end() -> None:
            # Interrupted (Ctrl-C, a session budget): trials still live are KILLED, reopened on resume.
            for trial in trials:
                run_id = self.runs.get(trial.trial_id)
                if run_id in self._running:
                    self._runlog(run_id).set_status("KILLED")
                    self._running.discard(run_id)
            waiting = [r for r in self._logs.values() if not r.flush()]
            if waiting:
                log.warning("MLflow: the tracking server %s still lacks records of %d run(s) of this sweep (%s); "
                            "they are kept in %s: deliver them with `vilocal tracking sync %s` once it is up.",
                            self.uri, len(waiting), "; ".join(f"{r.run_id}: {describe(r.pending())}" for r in waiting),
                            self.spool_dir, self.spool_dir)

        self._guard("ending the sweep's runs", end)


def close_open_children(parent_run_id: str, experiment: str, uri: str | None = None, status: str = "KILLED") -> int:
    """End any child run of ``parent_run_id`` still RUNNING (a crash of the driver between
    events); returns how many (0 when the server is away: it warns instead of raising). Called
    after every Tuner.fit, so no run outlives its sweep."""
    import mlflow

    uri = tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        with bounded_http():
            exp_id = ensure_experiment(experiment, uri)
            open_runs = client.search_runs(
                [exp_id],
                filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
            )
            for run in open_runs:
                client.set_terminated(run.info.run_id, status=status)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("MLflow: could not close the open child runs of %s: the tracking server %s is away (%s)",
                    parent_run_id, uri, short_error(exc))
        return 0
    return len(open_runs)
