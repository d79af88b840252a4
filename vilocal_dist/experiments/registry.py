"""The published protocols by name, their configs, and the harness that runs and records one.

``run_experiment("compression", tiny=True, overrides={"crfs": [23, 40]})``:

1. resolve the config: ``sweeps/experiments/NAME.yaml`` (paper scale), with ``NAME-tiny.yaml``
   merged over it for the tiny variant, then ``--set`` overrides; the protocol validates all of
   it before anything starts;
2. open the MLflow parent run (experiment ``vilocal-NAME``; tags, the flattened config and
   ``config.json``), run the protocol (it adds a child run per condition as each finishes, and
   files its training runs under the parent), then log ``table.csv``, ``table.md``,
   ``table.json`` and ``plots/*.png`` to the parent and to ``WORKDIR/results/NAME/<run id>/``.

The parent is created through ``MlflowClient`` rather than ``mlflow.start_run``: the training
and forge layers open their own fluent runs inside the protocol, which an active fluent parent
would block. It always ends: FINISHED, FAILED, or KILLED on Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vilocal_dist.config import apply_sets, closest, deep_merge, load_yaml
from vilocal_dist.errors import ConfigError
from vilocal_dist.experiments.common import spec_file, workdir_of, write_text_atomic


@dataclass(frozen=True)
class ExperimentInfo:
    name: str
    module: str  # under vilocal_dist.experiments; defines validate(raw, source) and run(config, recorder)
    title: str


EXPERIMENTS: dict[str, ExperimentInfo] = {
    "generalization": ExperimentInfo("generalization", "generalization",
                                     "ViLocal Table II: train on two inpainting methods, test on seen and unseen ones"),
    "compression": ExperimentInfo("compression", "compression",
                                  "ViLocal Fig. 4 / Table III: F1 and IoU after re-encoding and double compression"),
    "ablation": ExperimentInfo("ablation", "ablation",
                               "ViLocal Table V + controls: w/o HP3D, w/o contrastive, random frozen, full, fine-tuned"),
    "inpaint-quality": ExperimentInfo("inpaint-quality", "inpaint_quality",
                                      "IIVI Table 1: PSNR / SSIM / temporal consistency with fixed and object masks"),
}
TINY_SUFFIX = "-tiny"


def list_experiments() -> list[str]:
    return list(EXPERIMENTS)


def get_experiment(name: str) -> tuple[ExperimentInfo, bool]:
    """(info, tiny) for ``name``; ``NAME-tiny`` selects the tiny variant. Unknown names suggest one."""
    tiny = name.endswith(TINY_SUFFIX) and name[: -len(TINY_SUFFIX)] in EXPERIMENTS
    base = name[: -len(TINY_SUFFIX)] if tiny else name
    if base not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}{closest(name, EXPERIMENTS)}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[base], tiny


def spec_paths(name: str, tiny: bool) -> list[Path]:
    """The YAML files that make the config of ``name``, base first."""
    paths = [spec_file(f"experiments/{name}.yaml")] + ([spec_file(f"experiments/{name}{TINY_SUFFIX}.yaml")] if tiny else [])
    for path in paths:
        if not path.is_file():
            raise ConfigError("experiment config not found (is the package installed with its data?)", path)
    return paths


def resolve_config(
    name: str, *, tiny: bool = False, config: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """(validated protocol config, resolved raw mapping): YAML(s) < ``config`` file < ``overrides``."""
    info, tiny = _info(name, tiny)
    paths = spec_paths(info.name, tiny)
    if config is not None:
        paths.append(Path(config))
    raw: dict[str, Any] = {}
    for path in paths:
        raw = deep_merge(raw, load_yaml(path, "experiment config"))
    raw = apply_sets(raw, overrides or {})
    module = importlib.import_module(f"vilocal_dist.experiments.{info.module}")
    return module.validate(raw, paths[-1]), raw


def _info(name: str, tiny: bool) -> tuple[ExperimentInfo, bool]:
    info, named_tiny = get_experiment(name)
    return info, tiny or named_tiny


# ----------------------------------------------------------------------------- recording


@dataclass
class Outcome:
    """What a protocol hands back: its table (long form), the paper-style markdown, plots."""

    rows: list[dict[str, Any]]
    columns: list[str]
    markdown: str
    figures: dict[str, Any] = field(default_factory=dict)  # "plots/x.png" -> matplotlib Figure
    texts: dict[str, str] = field(default_factory=dict)  # extra artifacts, name -> text


@dataclass(frozen=True)
class ExperimentResult:
    name: str
    tiny: bool
    experiment: str  # MLflow experiment
    run_id: str  # MLflow parent run
    results_dir: Path
    markdown: str
    rows: list[dict[str, Any]]
    seconds: float


class Recorder:
    """The protocol's parent run: child runs per condition, training runs filed under it."""

    def __init__(self, client: Any, experiment: str, experiment_id: str, run_id: str) -> None:
        self.client, self.experiment, self.experiment_id, self.run_id = client, experiment, experiment_id, run_id

    def child(
        self, name: str, *, params: Mapping[str, Any], metrics: Mapping[str, float],
        tags: Mapping[str, str] | None = None, texts: Mapping[str, str] | None = None,
    ) -> str:
        """One finished child run for a condition: params, final metrics, tags, text artifacts."""
        import math

        from mlflow.entities import Metric, Param

        from vilocal_dist.tracking.runs import flatten, provenance

        all_tags = {**provenance(), **(tags or {}), "mlflow.parentRunId": self.run_id, "vilocal.role": "condition"}
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id
        status = "FAILED"
        try:
            now = int(time.time() * 1000)
            flat = [Param(k, str(v)[:500]) for k, v in flatten(params).items()]
            values = [Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(float(v))]
            for i in range(0, max(len(flat), len(values)), 100):
                self.client.log_batch(run_id, params=flat[i : i + 100], metrics=values[i : i + 100])
            for artifact, text in (texts or {}).items():
                self.client.log_text(run_id, text, artifact)
            status = "FINISHED"
        finally:
            self.client.set_terminated(run_id, status=status)
        return run_id

    def adopt(self, run_ids: Any, condition: str) -> None:
        """File runs made by the training layer (same experiment) under this parent."""
        for run_id in run_ids:
            self.client.set_tag(run_id, "mlflow.parentRunId", self.run_id)
            self.client.set_tag(run_id, "vilocal.condition", condition)


def _open_parent(experiment: str, run_name: str, raw: Mapping[str, Any], tags: Mapping[str, str]) -> Recorder:
    import mlflow
    from mlflow.entities import Param

    from vilocal_dist.tracking.runs import flatten, provenance
    from vilocal_dist.tracking.setup import ensure_experiment, tracking_uri

    uri = tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = ensure_experiment(experiment, uri)
    run_id = client.create_run(exp_id, run_name=run_name, tags={**provenance(), **tags}).info.run_id
    params = [Param(k, str(v)[:500]) for k, v in flatten(raw).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    client.log_text(run_id, json.dumps(raw, indent=2, sort_keys=True, default=str), "config.json")
    return Recorder(client, experiment, exp_id, run_id)


def _save(recorder: Recorder, outcome: Outcome, folder: Path) -> None:
    """table.csv / table.md / table.json, plots and extra texts: in the parent run and in ``folder``."""
    import matplotlib.pyplot as plt

    from vilocal_dist.tracking.sweep_report import to_csv

    texts = {
        "table.csv": to_csv(outcome.rows, outcome.columns),
        "table.md": outcome.markdown,
        "table.json": json.dumps(outcome.rows, indent=2, default=str),
        **outcome.texts,
    }
    for name, text in texts.items():
        write_text_atomic(folder / name, text)
        recorder.client.log_text(recorder.run_id, text, name)
    for name, fig in outcome.figures.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(folder / name, dpi=110)
        recorder.client.log_figure(recorder.run_id, fig, name)
        plt.close(fig)


def run_experiment(
    name: str, *, tiny: bool = False, config: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ExperimentResult:
    """Resolve, validate, run and record one protocol (see the module docstring). Uses the running
    Ray (``ray.init`` or ``distributed.tuning.init_ray`` first to pick a cluster), else a local one."""
    from vilocal_dist.distributed.tuning import init_ray

    info, tiny = _info(name, tiny)
    spec, raw = resolve_config(info.name, tiny=tiny, config=config, overrides=overrides)
    init_ray()
    module = importlib.import_module(f"vilocal_dist.experiments.{info.module}")
    workdir = workdir_of(raw)
    raw = {**raw, "workdir": str(workdir)}
    experiment = str(raw.get("experiment") or f"vilocal-{info.name}")
    run_name = f"{info.name}{TINY_SUFFIX if tiny else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {"vilocal.experiment": info.name, "vilocal.variant": "tiny" if tiny else "full", "vilocal.role": "parent",
            "mlflow.note.content": info.title}
    start = time.perf_counter()
    recorder = _open_parent(experiment, run_name, raw, tags)
    status = "FAILED"
    try:
        outcome = module.run(spec, recorder, workdir=workdir)
        folder = workdir / "results" / info.name / recorder.run_id
        _save(recorder, outcome, folder)
        seconds = time.perf_counter() - start
        recorder.client.log_metric(recorder.run_id, "wall_seconds", seconds)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        recorder.client.set_terminated(recorder.run_id, status=status)
    return ExperimentResult(info.name, tiny, experiment, recorder.run_id, folder, outcome.markdown, outcome.rows, seconds)


def describe(spec: Any) -> dict[str, Any]:
    """A validated protocol config as plain data (for ``--show-config``)."""
    return json.loads(json.dumps(dataclasses.asdict(spec), default=str))
