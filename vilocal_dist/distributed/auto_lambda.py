"""Per-video automatic choice of IIVI's regulariser weights (λ_a, λ_s) by self-validation.

The IIVI paper leaves open how to set λ_a and λ_s for a new video (no ground truth exists for
the hole). Here a small Tune sweep fits the video once per λ pair and keeps the result with the
best held-out known-pixel PSNR (``selfval/psnr``, computed by the method on pixels it never saw).
Each trial stores its composited output as its checkpoint, so the winner is returned without a
refit, and a repeated call with the same inputs restores the finished experiment instead of
recomputing it.

``python -m vilocal_dist.distributed.auto_lambda --composed N …`` measures how often the λ chosen
this way is within 0.3 dB (true hole PSNR, from the composed videos' clean backgrounds) of the
best λ of the sweep.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from ray import tune

from vilocal_dist.distributed.tune_mlflow import MLflowTrialLogger, close_open_children, numeric_metrics
from vilocal_dist.distributed.tuning import (
    SessionBudget,
    can_resume,
    default_concurrency,
    experiment_path,
    init_ray,
    limit_threads,
    parent_run,
    result_rows,
)
from vilocal_dist.config import apply_sets, parse_sets, size_arg
from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint.base import InpaintResult, check_inputs
from vilocal_dist.inpaint.registry import check_method_config, get_method
from vilocal_dist.tracking.runs import log_json

METRIC = "selfval/psnr"
TRUE_METRIC = "true/hole_psnr"
EXPERIMENT = "vilocal-auto-lambda"
#: The regulariser weights a method must have for auto-λ (its config class's field names).
LAMBDA_KEYS = ("lambda_a", "lambda_s")
#: Where Optuna draws λ_a and λ_s from (log-uniformly) when sampling instead of the grid.
LAMBDA_RANGE = (1e-3, 1.0)
#: λ_a × λ_s around the paper's (0.1, 0.2), including "off" for each regulariser.
DEFAULT_GRID: tuple[tuple[float, float], ...] = tuple(itertools.product((0.0, 0.1, 0.5), (0.0, 0.2, 1.0)))


def check_lambda_method(method: str, base_cfg: Mapping[str, Any] | None = None) -> None:
    """Up front (before decoding or Ray): ``method`` must be registered, accept ``base_cfg`` and
    have λ_a and λ_s among its options; asks the method registry, not a list of names."""
    resolved = check_method_config(method, dict(base_cfg or {}))
    missing = [k for k in LAMBDA_KEYS if not hasattr(resolved, k)]
    if missing:
        raise ConfigError(f"--auto-lambda: method {method!r} has no {', '.join(missing)} option to choose "
                          "(a method with the IIVI regularisers is needed, e.g. iivi)")
RESULT_FILE = "result.npz"


def grid_configs(grid: Sequence[tuple[float, float]] | Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """``[(λ_a, λ_s), …]`` or ``{"lambda_a": [...], "lambda_s": [...]}`` (full product) → configs."""
    if isinstance(grid, Mapping):
        keys = list(grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    return [dict(zip(LAMBDA_KEYS, (float(a), float(s)))) for a, s in grid]


def inpaint_trial(
    config: dict[str, Any],
    *,
    frames: np.ndarray,
    masks: np.ndarray,
    gt_frames: np.ndarray | None,
    base_cfg: Mapping[str, Any],
    method: str,
    seed: int,
    threads: int,
) -> None:
    """Tune trainable: fit one video with ``base_cfg`` ∪ ``config["params"]``; report the method's
    metrics (plus the true hole PSNR when ``gt_frames`` is known) with the output as checkpoint.

    The method keeps its own checkpoints in the trial's folder until its fit ends, so a trial
    restarted after an interruption continues its fit instead of starting over.
    """
    from vilocal_dist.inpaint.selfval import holdout_psnr

    from vilocal_dist.inpaint.stopping import watch

    def report_progress(point: dict[str, float]) -> None:
        # Only points where the weights act (IIVI's phase 2; methods without phases: all), so an
        # ASHA scheduler compares trials when they differ, not on their shared phase 1.
        if point.get("phase", 2.0) == 2.0:
            tune.report(numeric_metrics(point))

    limit_threads(threads)
    cfg = {**base_cfg, **config["params"]}
    workdir = Path(tune.get_context().get_trial_dir()) / "work"
    with watch(on_eval=report_progress, gt_frames=gt_frames):
        result = get_method(method)(frames, masks, cfg, seed=seed, progress=False, workdir=workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # fit done: its resume state is no longer needed
    metrics = numeric_metrics(result.metrics)
    if gt_frames is not None:
        metrics[TRUE_METRIC] = holdout_psnr(result.frames, gt_frames, masks)  # PSNR inside the hole
    with tempfile.TemporaryDirectory() as tmp:
        np.savez_compressed(Path(tmp) / RESULT_FILE, frames=result.frames)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _params_of(config: Mapping[str, Any]) -> dict[str, Any]:
    return dict(config["params"])


def _run_name(trial: Any) -> str:
    params = trial.config["params"]
    return f"{trial.trial_id} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def video_sweep(
    frames: np.ndarray,
    masks: np.ndarray,
    *,
    params: Any,
    name: str,
    method: str = "iivi",
    base_cfg: Mapping[str, Any] | None = None,
    gt_frames: np.ndarray | None = None,
    num_samples: int = 1,
    search_alg: Any = None,
    metric: str = METRIC,
    mode: str = "max",
    seed: int = 0,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_concurrent: int = 0,
    storage: str | None = None,
    callbacks: Sequence[Any] = (),
    constants: Mapping[str, Any] | None = None,
    verbose: int | None = 0,
    scheduler: Any = None,
) -> Any:
    """One Tuner over ``params`` for one video; resumes the experiment ``name`` when it exists.

    ``params`` is a Tune space for ``config["params"]``: a ``tune.grid_search`` of dicts, or a
    dict of distributions (then ``search_alg``, e.g. a seeded OptunaSearch, picks the samples).
    ``constants`` are added to every trial's config as is (e.g. the video's name, for logging).
    The video goes to the trials once through the object store (``tune.with_parameters``).
    Trials report their self-validation curve as they fit, so a ``scheduler`` (ASHA) can stop
    hopeless ones early.
    """
    check_inputs(frames, masks)
    path = experiment_path(name, storage)
    trainable = tune.with_resources(
        tune.with_parameters(
            inpaint_trial, frames=frames, masks=masks, gt_frames=gt_frames, base_cfg=dict(base_cfg or {}),
            method=method, seed=seed, threads=max(1, int(cpus_per_trial)),
        ),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
    )  # fmt: skip
    if can_resume(path):
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True).fit()
    concurrency = default_concurrency(cpus_per_trial, gpus_per_trial, max_concurrent)
    tuner = tune.Tuner(
        trainable,
        param_space={"params": params, **(constants or {})},
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=num_samples, search_alg=search_alg, max_concurrent_trials=concurrency,
            scheduler=scheduler,
        ),
        run_config=tune.RunConfig(
            name=path.rsplit("/", 1)[1], storage_path=path.rsplit("/", 1)[0], callbacks=list(callbacks), verbose=verbose
        ),
    )
    return tuner.fit()


def load_output(result: Any) -> np.ndarray:
    """The composited frames a trial stored as its checkpoint (uint8 T×H×W×3)."""
    with result.checkpoint.as_directory() as d:
        return np.load(Path(d) / RESULT_FILE)["frames"]


def _fingerprint(frames: np.ndarray, masks: np.ndarray, *parts: Any) -> str:
    h = hashlib.sha256(frames.tobytes())
    h.update(np.packbits(masks).tobytes())
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def auto_lambda(
    frames: np.ndarray,
    masks: np.ndarray,
    *,
    grid: Sequence[tuple[float, float]] | Mapping[str, Sequence[float]] | None = None,
    num_samples: int | None = None,
    lambda_range: tuple[float, float] = LAMBDA_RANGE,
    base_cfg: Mapping[str, Any] | None = None,
    gt_frames: np.ndarray | None = None,
    method: str = "iivi",
    seed: int = 0,
    cpus_per_trial: float = 1.0,
    gpus_per_trial: float = 0.0,
    max_concurrent: int = 0,
    name: str | None = None,
    track: bool = True,
    verbose: int | None = 0,
) -> tuple[InpaintResult, list[dict[str, Any]]]:
    """Inpaint ``masks`` (bool T×H×W) in ``frames`` (uint8 T×H×W×3) with the λ pair that scores the
    best ``selfval/psnr``; returns (that result, one row per trial sorted best first).

    ``grid`` (default ``DEFAULT_GRID``) tries every pair; with ``num_samples`` instead, Optuna TPE
    (seeded) draws that many pairs log-uniformly from ``lambda_range``. ``gt_frames`` (clean
    backgrounds, uint8 T×H×W×3) adds ``true/hole_psnr`` to every row, for evaluation only.
    Starts a local Ray (or joins ``$RAY_ADDRESS``) unless Ray is up; ``track`` logs a parent
    run and a child run per trial to MLflow (experiment ``vilocal-auto-lambda``).
    """
    from ray.tune.search.optuna import OptunaSearch

    from vilocal_dist.tracking.sweep_report import sort_rows

    base = dict(base_cfg or {})
    check_lambda_method(method, base)
    if grid is not None and num_samples is not None:
        raise ValueError("give grid or num_samples, not both")
    init_ray()
    if num_samples is not None:
        low, high = lambda_range
        params: Any = {key: tune.loguniform(low, high) for key in LAMBDA_KEYS}
        search_alg, samples = OptunaSearch(seed=seed), num_samples
    else:
        params, search_alg, samples = tune.grid_search(grid_configs(grid or DEFAULT_GRID)), None, 1
    key = _fingerprint(frames, masks, method, base, seed, grid, num_samples, lambda_range, gt_frames is not None)
    name = name or f"auto-lambda-{key}"
    kwargs = dict(
        params=params, name=name, method=method, base_cfg=base, gt_frames=gt_frames, num_samples=samples,
        search_alg=search_alg, seed=seed, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
        max_concurrent=max_concurrent, verbose=verbose,
    )  # fmt: skip
    if track:
        path = experiment_path(name)
        resume = can_resume(path)
        run_params = {"method": method, "base": base, "grid": grid, "num_samples": num_samples, "seed": seed}
        with parent_run(EXPERIMENT, name, path=path, resume=resume, params=run_params) as run:
            cb = MLflowTrialLogger(experiment=EXPERIMENT, parent_run_id=run.info.run_id, params_of=_params_of, run_name_of=_run_name)
            try:
                results = video_sweep(frames, masks, callbacks=[cb, SessionBudget()], **kwargs)
            finally:
                close_open_children(run.info.run_id, EXPERIMENT)
            best, rows = _pick(results)
            import mlflow

            # Metrics and an artifact, not params: a resumed sweep may find a better pair.
            mlflow.log_metrics({f"best/{k}": v for k, v in numeric_metrics(best.metrics).items()})
            log_json({"best": best.config, "rows": sort_rows(rows, METRIC, "max")}, "best_config.json")
    else:
        results = video_sweep(frames, masks, **kwargs)
        best, rows = _pick(results)
    best.config = {**base, **best.config, "method": method, "seed": seed}
    return best, sort_rows(rows, METRIC, "max")


def _pick(results: Any) -> tuple[InpaintResult, list[dict[str, Any]]]:
    """The best trial by ``selfval/psnr`` (ties: lowest trial id) with its stored output, and
    the table rows."""
    from vilocal_dist.tracking.sweep_report import best_row

    rows = result_rows(results, extra=lambda c: dict(c["params"]))
    finished = {(r.metrics or {}).get("trial_id") for r in results if r.checkpoint}  # not stopped early
    best = best_row([r for r in rows if r["status"] != "ERROR" and r["trial_id"] in finished], METRIC, "max")
    if best is None:
        errors = [str(r.error)[:200] for r in results if r.error]
        raise RuntimeError(f"auto-λ: no trial reported a finite {METRIC} (errors: {errors})")
    result = next(r for r in results if (r.metrics or {}).get("trial_id") == best["trial_id"])
    metrics = numeric_metrics(result.metrics or {})
    return InpaintResult(frames=load_output(result), metrics=metrics, config=dict(result.config["params"])), rows


# --- agreement measurement on composed videos -----------------------------------------------------


def agreement(rows_per_video: Sequence[Sequence[Mapping[str, Any]]], tolerance_db: float = 0.3) -> tuple[int, int]:
    """(videos where the selfval-chosen trial's true hole PSNR is within ``tolerance_db`` of the
    sweep's best true hole PSNR, videos counted)."""
    hits = counted = 0
    for rows in rows_per_video:
        valid = [r for r in rows if math.isfinite(r.get(METRIC, math.nan)) and math.isfinite(r.get(TRUE_METRIC, math.nan))]
        if not valid:
            continue
        chosen = max(valid, key=lambda r: r[METRIC])
        best_true = max(r[TRUE_METRIC] for r in valid)
        counted += 1
        hits += int(best_true - chosen[TRUE_METRIC] <= tolerance_db)
    return hits, counted


def _parse_grid(text: str) -> list[tuple[float, float]]:
    """``"0:0,0.1:0.2"`` → [(0.0, 0.0), (0.1, 0.2)]."""
    try:
        return [tuple(float(v) for v in pair.split(":")) for pair in text.split(",")]  # type: ignore[misc]
    except ValueError:
        raise argparse.ArgumentTypeError(f"grid must be la:ls,la:ls,…, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    from vilocal_dist.data.composed import compose_video

    p = argparse.ArgumentParser(
        prog="python -m vilocal_dist.distributed.auto_lambda",
        description="Auto-λ on composed videos: how often does the self-validation choice land within "
        "--tolerance dB (true hole PSNR) of the best λ pair of the sweep?",
    )
    p.add_argument("--composed", type=int, default=3, help="number of composed videos (seeds SEED…)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=size_arg(), default=(48, 64), metavar="HxW", help="composed video size (default 48x64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=_parse_grid, default=None, help="λ pairs la:ls,… (default: 3×3 grid)")
    p.add_argument("--method", default="iivi")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="method option")
    p.add_argument("--tolerance", type=float, default=0.3, help="dB (default 0.3)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--max-concurrent", type=int, default=0)
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    import ray

    h, w = args.size
    base = apply_sets({"preset": "tiny", "random_vgg": True, "iters_recon": 150, "iters_reg": 150}, parse_sets(args.overrides))
    init_ray(num_cpus=args.num_cpus)
    per_video, table = [], []
    for i in range(args.composed):
        video = compose_video(args.seed + i, args.frames, (h, w))
        _, rows = auto_lambda(
            video.frames, video.masks, grid=args.grid, base_cfg=base, gt_frames=video.backgrounds, method=args.method,
            seed=args.seed, cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent, verbose=0,
        )  # fmt: skip
        per_video.append(rows)
        hits, _ = agreement([rows], args.tolerance)
        chosen = rows[0]
        best_true = max(r.get(TRUE_METRIC, -math.inf) for r in rows)
        worst_true = min(r.get(TRUE_METRIC, math.inf) for r in rows)
        table.append({"video": video.name, "chosen": {k: chosen[k] for k in LAMBDA_KEYS},
                      "chosen_true": chosen.get(TRUE_METRIC), "best_true": best_true,
                      "spread_true_db": best_true - worst_true, "agree": bool(hits)})  # fmt: skip
    hits, counted = agreement(per_video, args.tolerance)
    ray.shutdown()
    out = {"agreement": hits / counted if counted else math.nan, "hits": hits, "videos": counted,
           "tolerance_db": args.tolerance, "base_cfg": base, "per_video": table}  # fmt: skip
    if args.json:
        print(json.dumps(out, default=str))
    else:
        for row in table:
            print(f"{row['video']}: chose {row['chosen']} true {row['chosen_true']:.2f} dB, best {row['best_true']:.2f} dB "
                  f"(grid spread {row['spread_true_db']:.2f} dB), agree={row['agree']}")
        print(f"agreement within {args.tolerance} dB: {hits}/{counted}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
