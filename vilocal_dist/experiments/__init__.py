"""The papers' protocols as one-command experiments on Ray, recorded in MLflow.

``vilocal experiment NAME [--tiny] [--set key=value ...]`` or :func:`run_experiment`; names:
``generalization`` (ViLocal Table II), ``compression`` (Fig. 4, Table III), ``ablation``
(Table V), ``inpaint-quality`` (IIVI Table 1). Configs: ``sweeps/experiments/NAME.yaml`` (paper
scale) and ``NAME-tiny.yaml`` (laptop / tests, merged over it).
"""

from vilocal_dist.experiments.registry import (
    EXPERIMENTS,
    ExperimentResult,
    list_experiments,
    resolve_config,
    run_experiment,
)

__all__ = ["EXPERIMENTS", "ExperimentResult", "list_experiments", "resolve_config", "run_experiment"]
