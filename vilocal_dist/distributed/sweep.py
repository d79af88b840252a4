"""Hyperparameter sweeps from YAML specs: Optuna TPE (seeded) + optional ASHA, logged to MLflow.

What a trial does is its spec's kind (``distributed.kinds``: ``vilocal-contrastive``,
``vilocal-focal``, ``inpaint-regularizers``, one module each); this module is the driver they
share: refuse or resume existing results, let the kind prepare, open the sweep's parent run, let
the kind fit its trials, and write the report.

MLflow: the spec's experiment (one per sweep family), a parent run per sweep (reopened on
``--resume``) holding the spec, ``best_config.json``, ``results.csv``/``.md`` and plots; a child
run per trial from the driver-side ``MLflowTrialLogger``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from vilocal_dist.console import phase
from vilocal_dist.distributed.progress import TrialProgress
from vilocal_dist.distributed.spec import SweepSpec, load_specs
from vilocal_dist.distributed.tune_mlflow import MLflowTrialLogger, close_open_children
from vilocal_dist.distributed.tuning import SessionBudget, experiment_path, parent_run, set_session_budget
from vilocal_dist.errors import ConfigError
from vilocal_dist.tracking.sweep_report import best_row, write_report


@dataclass
class SweepOutcome:
    name: str
    path: str
    parent_run_id: str
    metric: str
    params: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    complete: bool = True  # False when interrupted: --resume continues


def _params_of(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict(config["params"]) | ({"video": config["video"]} if "video" in config else {})


def _run_name(trial: Any) -> str:
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config["params"].items())
    return f"{trial.config.get('video', 'trial')} {trial.trial_id} ({params})"


def run_sweep(spec: SweepSpec, *, resume: bool = False, stop_after: int | None = None) -> SweepOutcome:
    """Run (or, with ``resume``, continue) one sweep; needs ``ray.init`` done by the caller.

    ``stop_after`` interrupts this session after that many finished trials (as Ctrl-C would);
    ``resume=True`` then continues without redoing finished trials.
    """
    kind = spec.kind
    path = experiment_path(spec.name)
    exists = kind.exists(spec, path)
    if exists and not resume:
        raise ConfigError(f"sweep {spec.name!r} already has results at {path}; use --resume, or set name=… to start anew", spec.path)
    if resume and not exists:
        raise ConfigError(f"nothing to resume: no sweep {spec.name!r} at {path}", spec.path)
    per_video = " per video" if kind.name == "inpaint-regularizers" else ""
    phase(f"sweep {spec.name}: {spec.num_samples} {kind.name} trials{per_video}, "
          f"{spec.mode}imize {spec.metric} over {', '.join(spec.param_names)}")
    prepared = kind.prepare(spec)
    set_session_budget(stop_after)
    params = {"spec": str(spec.path), "kind": kind.name, "metric": spec.metric, "mode": spec.mode,
              "num_samples": spec.num_samples, "seed": spec.seed, "scheduler": asdict(spec.scheduler),
              "resources": asdict(spec.resources), "data": asdict(spec.data), "base": dict(spec.base),
              "search_space": {p.name: {k: v for k, v in asdict(p).items() if v not in (None, ())} for p in spec.search_space}}  # fmt: skip
    with parent_run(spec.experiment, spec.name, path=path, resume=resume, params=params, tags={"vilocal.kind": kind.name}) as run:
        parent = run.info.run_id
        logger = MLflowTrialLogger(experiment=spec.experiment, parent_run_id=parent, params_of=_params_of, run_name_of=_run_name)
        callbacks = [logger, SessionBudget(), TrialProgress(spec.num_samples, f"sweep {spec.name}")]
        try:
            results, complete = kind.fit(spec, path, exists, callbacks, prepared)
            rows = kind.rows(spec, results)
        finally:
            set_session_budget(None)
            close_open_children(parent, spec.experiment)
        outcome = SweepOutcome(spec.name, path, parent, spec.metric, spec.param_names, rows, best_row(rows, spec.metric, spec.mode), complete)
        _log_report(spec, outcome)
    return outcome


def _log_report(spec: SweepSpec, outcome: SweepOutcome) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        write_report(outcome.rows, tmp, metric=spec.metric, mode=spec.mode, params=spec.param_names, group=spec.kind.group,
                     extra_best={"base": dict(spec.base), "kind": spec.kind.name, "complete": outcome.complete})  # fmt: skip
        mlflow.log_artifacts(tmp)
    mlflow.log_text(spec.path.read_text(), f"spec/{spec.path.name}")
    if outcome.best is not None and math.isfinite(outcome.best.get(spec.metric, math.nan)):
        mlflow.log_metric(f"best/{spec.metric}", outcome.best[spec.metric])
    mlflow.set_tag("vilocal.complete", str(outcome.complete))


def run_specs(
    specs: Sequence[SweepSpec], *, resume: bool = False, stop_after: int | None = None
) -> list[SweepOutcome]:
    """Run validated specs in order (``resume``: continue those with results, start the others);
    stops after the first one that is interrupted."""
    outcomes = []
    for spec in specs:
        outcome = run_sweep(spec, resume=resume and spec.kind.exists(spec, experiment_path(spec.name)), stop_after=stop_after)
        outcomes.append(outcome)
        if not outcome.complete:
            break
    return outcomes


def run_spec_file(
    path: str | Path, overrides: Mapping[str, Any] | None = None, *, resume: bool = False,
    only: list[str] | None = None, stop_after: int | None = None,
) -> list[SweepOutcome]:
    """Validate every sub-sweep of a spec file first, then run them in order."""
    return run_specs(load_specs(path, overrides, only), resume=resume, stop_after=stop_after)
