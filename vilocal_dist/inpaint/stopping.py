"""When an internal-learning fit has converged: a plateau rule on the self-validation score.

IIVI and InterVI train one network per video; how long is the method's own choice, and a fixed
budget measures the budget rather than the method. Every ``every`` iterations the fit scores its
prediction on held-out known pixels (``selfval/psnr``) and hands it to a ``Plateau``: the fit stops
when the best score has not improved by more than ``min_delta`` dB over the last ``patience``
evaluations, never before ``min_iters`` and never past ``max_iters``. The same evaluations make the
learning curve (``history``) and, through ``watch``, feed a caller's callback (Tune's
``report`` in a λ sweep) and an optional ground truth (hole PSNR on composed videos).

The learning-rate schedule lives here too, so both methods decay the same way over ``max_iters``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from vilocal_dist.inpaint.selfval import holdout_psnr


@dataclass(frozen=True)
class StopRule:
    """Evaluate every ``every`` iterations (0 = never: a fixed ``max_iters`` run)."""

    every: int
    patience: int  # evaluations without a gain > min_delta before stopping
    min_delta: float  # dB
    min_iters: int
    max_iters: int

    @property
    def enabled(self) -> bool:
        return self.every > 0 and self.patience > 0


@dataclass
class Plateau:
    """The state of a ``StopRule`` over one fit phase; picklable (a checkpoint keeps it).

    With ``decays`` > 0 (the ``plateau`` lr schedule) the first plateaus do not stop the fit: each
    divides the learning rate by 10 (``scale``) and waits for a new plateau. A drop at the plateau
    needs no budget to decay over, so it behaves the same at 3,000 iterations and at 80,000.
    """

    rule: StopRule
    best: float = -math.inf
    since_best: int = 0  # evaluations since the best one
    stopped_at: int = 0  # iteration the rule fired at (0 = it did not)
    decays: int = 0  # lr drops left before a plateau stops the fit
    scale: float = 1.0  # learning-rate multiplier after the drops so far

    def due(self, iteration: int) -> bool:
        """Whether ``iteration`` (1-based count of finished steps) is an evaluation point."""
        return self.rule.every > 0 and (iteration % self.rule.every == 0 or iteration == self.rule.max_iters)

    def update(self, iteration: int, score: float) -> bool:
        """Record ``score`` at ``iteration``; True when the fit should stop now."""
        if math.isfinite(score) and score > self.best + self.rule.min_delta:
            self.best, self.since_best = score, 0
        else:  # NaN (nothing held out) never counts as a gain
            self.since_best += 1
        if iteration >= self.rule.max_iters:
            return True
        if self.rule.enabled and iteration >= self.rule.min_iters and self.since_best >= self.rule.patience:
            if self.decays > 0:
                self.decays, self.scale, self.since_best = self.decays - 1, self.scale * PLATEAU_DROP, 0
                return False
            self.stopped_at = iteration
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "since_best": self.since_best, "stopped_at": self.stopped_at,
                "decays": self.decays, "scale": self.scale}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.since_best, self.stopped_at = float(state["best"]), int(state["since_best"]), int(state["stopped_at"])
        self.decays, self.scale = int(state.get("decays", 0)), float(state.get("scale", 1.0))  # older checkpoints: none


#: The ``plateau`` schedule: how many times the lr drops, and by what factor, before a plateau stops.
PLATEAU_DECAYS, PLATEAU_DROP = 1, 0.1


def phase_plateau(rule: StopRule, schedule: str, previous: Plateau | None = None) -> Plateau:
    """A fresh ``Plateau`` for a fit phase. Under the ``plateau`` schedule a phase starts at the
    learning rate the previous phase ended at and has the drops that phase did not use."""
    if schedule != "plateau":
        return Plateau(rule)
    if previous is None:
        return Plateau(rule, decays=PLATEAU_DECAYS)
    used = round(math.log(previous.scale) / math.log(PLATEAU_DROP)) if previous.scale < 1 else 0
    return Plateau(rule, decays=max(0, PLATEAU_DECAYS - used), scale=previous.scale)


def lr_factor(schedule: str, iteration: int, max_iters: int, warmup: int) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based step about to run).

    ``constant``: 1. ``cosine``: linear warm-up over ``warmup`` steps, then a cosine from 1 to 0.1
    over the rest of ``max_iters`` (0.1, not 0, so a fit stopped late still learns). ``plateau``:
    1 here; the fit multiplies in its ``Plateau.scale`` (drops at plateaus, not by the clock).
    """
    if schedule in ("constant", "plateau"):
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r}; known: {', '.join(LR_SCHEDULES)}")
    if iteration < warmup:
        return (iteration + 1) / warmup
    progress = min(1.0, (iteration - warmup) / max(1, max_iters - warmup))
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


LR_SCHEDULES = ("constant", "cosine", "plateau")


def scaled_dilation(dilate: int, rows: int, reference_rows: int) -> int:
    """The hole dilation (px) at ``rows`` rows: ``round(dilate * rows / reference_rows)``, at least 1
    when ``dilate`` > 0. ``reference_rows`` = 0 keeps ``dilate`` as given (no scaling).

    The IIVI authors dilate by 12 px at 320 rows; at 80 rows the same margin is 3 px.
    """
    if dilate <= 0 or reference_rows <= 0:
        return max(0, dilate)
    return max(1, round(dilate * rows / reference_rows))


@dataclass
class Watch:
    """What a caller wants from each evaluation: a callback and/or a ground truth to score."""

    on_eval: Callable[[dict[str, float]], None] | None = None
    gt_frames: np.ndarray | None = None  # uint8 T×H×W×3 true backgrounds: adds true/hole_psnr
    history: list[dict[str, float]] = field(default_factory=list)


_WATCH: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("vilocal_inpaint_watch", default=None)


@contextlib.contextmanager
def watch(
    on_eval: Callable[[dict[str, float]], None] | None = None, gt_frames: np.ndarray | None = None
) -> Iterator[Watch]:
    """Within this block, IIVI and InterVI fits call ``on_eval(point)`` at every evaluation and
    score ``gt_frames`` (if given) in the hole. A context, not an argument, so the methods' shared
    call signature (and every plugin's) stays as it is."""
    token = _WATCH.set(Watch(on_eval, gt_frames))
    try:
        yield _WATCH.get()  # type: ignore[misc]
    finally:
        _WATCH.reset(token)


def current_watch() -> Watch | None:
    """The active ``watch``, or None."""
    return _WATCH.get()


def record_point(
    history: list[dict[str, float]], point: dict[str, float], predict: Callable[[], np.ndarray], masks: np.ndarray
) -> dict[str, float]:
    """Add ``true/hole_psnr`` (when watched with a ground truth), append to ``history`` and the
    watch's, call the watch's callback. ``predict()``: the fill as it stands (native uint8 T×H×W×3),
    called only when a ground truth is watched."""
    w = current_watch()
    point = dict(point)
    if w is not None and w.gt_frames is not None:
        point["true/hole_psnr"] = holdout_psnr(predict(), w.gt_frames, masks)
    history.append(point)
    if w is not None:
        w.history.append(point)
        if w.on_eval is not None:
            w.on_eval(point)
    return point
