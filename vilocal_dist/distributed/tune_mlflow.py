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
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ray import tune

from vilocal_dist.tracking.runs import flatten, provenance
from vilocal_dist.tracking.setup import ensure_experiment, tracking_uri

#: Tune's own bookkeeping keys: not metrics of the trial.
_TUNE_KEYS = frozenset({
    "training_iteration", "timestamp", "time_this_iter_s", "pid", "date", "hostname", "node_ip",
    "time_since_restore", "iterations_since_restore", "done", "trial_id", "experiment_tag",
    "checkpoint_dir_name", "should_checkpoint", "config",
})
_MAX_PARAM_LEN = 500


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
    ``run_name_of(trial) -> str`` names the child run (default: the trial's name).
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
    ) -> None:
        self.uri = tracking_uri(uri)
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.params_of = params_of
        self.run_name_of = run_name_of
        self.tags = {**provenance(), **(tags or {})}
        self.runs: dict[str, str] = {}  # trial_id -> MLflow run id
        self._client: Any = None
        self._running: set[str] = set()  # run ids known to be RUNNING (saves a read per result)

    # Tune pickles callbacks with the experiment: keep the client out of the pickle.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_running": set()}

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

    def _open(self, trial: Any) -> str:
        """The trial's run id, creating the run (with params) or reopening it as RUNNING."""
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            if run_id not in self._running:
                if self.client.get_run(run_id).info.status != "RUNNING":
                    self.client.update_run(run_id, status="RUNNING")
                self._running.add(run_id)
            return run_id
        exp_id = ensure_experiment(self.experiment, self.uri)
        name = self.run_name_of(trial) if self.run_name_of else str(trial)
        tags = {**self.tags, "mlflow.parentRunId": self.parent_run_id, "tune.trial_id": trial.trial_id}
        run = self.client.create_run(exp_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        self.runs[trial.trial_id] = run_id
        self._running.add(run_id)
        self._log_params(run_id, trial.config)
        return run_id

    def _log_params(self, run_id: str, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = self.params_of(config) if self.params_of else config
        flat = {k: str(v)[:_MAX_PARAM_LEN] for k, v in flatten(params).items()}
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])
        self.client.log_text(run_id, json.dumps(dict(params), indent=2, sort_keys=True, default=str), "config.json")

    def _close(self, trial: Any, status: str) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:  # failed before it ever started: still leave a record
            run_id = self._open(trial)
        if trial.last_result:
            last = {k: v for k, v in trial.last_result.items() if k != "config"}
            self.client.log_text(run_id, json.dumps(last, indent=2, sort_keys=True, default=str), "result.json")
        self.client.set_tag(run_id, "tune.status", trial.status)
        self.client.set_terminated(run_id, status=status)
        self._running.discard(run_id)

    # --- Tune hooks ------------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric

        run_id = self._open(trial)
        step = int(result.get("training_iteration", 0))
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numeric_metrics(result).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._open(trial)
        self.client.set_tag(run_id, "tune.retries", str(trial.num_failures))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED")
        # The trace sits in the driver's staging copy of the trial folder until the next sync.
        error_file = trial.error_file
        if error_file and Path(error_file).is_file():
            self.client.log_text(self.runs[trial.trial_id], Path(error_file).read_text()[-20_000:], "error.txt")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Interrupted (Ctrl-C, a session budget): trials still live are KILLED, reopened on resume.
        for trial in trials:
            run_id = self.runs.get(trial.trial_id)
            if run_id in self._running:
                self.client.set_terminated(run_id, status="KILLED")
                self._running.discard(run_id)


def close_open_children(parent_run_id: str, experiment: str, uri: str | None = None, status: str = "KILLED") -> int:
    """End any child run of ``parent_run_id`` still RUNNING (a crash of the driver between
    events); returns how many. Called after every Tuner.fit, so no run outlives its sweep."""
    import mlflow

    uri = tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = ensure_experiment(experiment, uri)
    open_runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for run in open_runs:
        client.set_terminated(run.info.run_id, status=status)
    return len(open_runs)
