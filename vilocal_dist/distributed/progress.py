"""Progress bars for Ray work, drawn in the driver: Tune trials and Ray Train epochs.

Tune calls its callbacks in the driver, so ``TrialProgress`` draws its bar there directly. Ray
Train reports reach a controller actor, not the driver: ``epoch_progress`` gives the trainer a
``ray.train.UserCallback`` that forwards each report's epoch to a tiny counter actor, and a driver
thread polls it into a bar. Either bar lives only in the process that created it: Tune pickles
callbacks with the experiment, so the bar is rebuilt lazily after a restore.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import ray
from ray import tune

from vilocal_dist.console import bar


class TrialProgress(tune.Callback):
    """One bar over the trials of a Tuner (``total`` = trials planned; finished and failed count).

    With ``ids_of(result) -> ids`` the bar counts the items results name instead (a trial that
    forges a shard of videos reports them in batches); an id seen before (a retried shard
    reporting its finished videos again) counts once.
    """

    def __init__(self, total: int, desc: str, unit: str = "trial",
                 ids_of: Callable[[dict], list[str]] | None = None) -> None:
        self.total, self.desc, self.unit, self.ids_of = total, desc, unit, ids_of
        self._bar: Any = None
        self._failed = 0
        self._counted: set[str] = set()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bar": None}

    def _advance(self, trials: list, failed: bool, n: int = 1) -> None:
        if self._bar is None:
            self._bar = bar(max(self.total, len(trials)), self.desc, self.unit)
        self._failed += failed
        if self._failed:
            self._bar.set_postfix_str(f"{self._failed} failed", refresh=False)
        self._bar.update(n)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        new = set(self.ids_of(result)) - self._counted if self.ids_of else set()
        if new:
            self._counted |= new
            self._advance(trials, failed=False, n=len(new))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self.ids_of:
            self._advance(trials, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._advance(trials, failed=True, n=0 if self.ids_of else 1)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@ray.remote(num_cpus=0)
class _EpochCounter:
    def __init__(self) -> None:
        self.epochs, self.metrics = 0, {}

    def set(self, epochs: int, metrics: dict[str, float]) -> None:
        self.epochs, self.metrics = epochs, metrics

    def get(self) -> tuple[int, dict[str, float]]:
        return self.epochs, self.metrics


class _ForwardReports(ray.train.UserCallback):
    """In the Train controller: each report's epoch count (rank 0's ``epoch``) to the counter."""

    def __init__(self, counter: Any, shown: tuple[str, ...]) -> None:
        self.counter, self.shown = counter, shown

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        first = metrics[0] if metrics else {}
        if "epoch" in first:
            self.counter.set.remote(int(first["epoch"]) + 1, {k: float(first[k]) for k in self.shown if k in first})


def _is_driver() -> bool:
    return ray.get_runtime_context().worker.mode == ray.SCRIPT_MODE


@contextmanager
def epoch_progress(total: int, desc: str, shown: tuple[str, ...] = ()) -> Iterator[list[Any]]:
    """Yields the Train callbacks to pass (none outside the driver, e.g. inside a Tune trial);
    while the block runs, a bar counts ``total`` epochs, showing the metrics named in ``shown``."""
    if not _is_driver():
        yield []
        return
    counter = _EpochCounter.remote()
    stop = threading.Event()
    progress = bar(total, desc, "epoch")

    def poll() -> None:
        while True:
            done = stop.wait(1.0)
            try:
                epochs, metrics = ray.get(counter.get.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a bar never stops training
                epochs, metrics = progress.n, {}
            if metrics:
                progress.set_postfix({k: f"{v:.3g}" for k, v in metrics.items()}, refresh=False)
            progress.update(max(0, epochs - progress.n))
            if done:
                return

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield [_ForwardReports(counter, shown)]
    finally:
        stop.set()
        thread.join()
        progress.close()
        ray.kill(counter)
