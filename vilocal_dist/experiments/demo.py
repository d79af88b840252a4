"""`vilocal demo`: the whole system once, on built-in composed videos, on a laptop.

composed videos → forged dataset via the Tune fan-out (several inpainting methods) → stage 1
(contrastive) → stage 2 (focal) on Ray Train → evaluation per method, seen and unseen → a tiny
Optuna sweep → everything in MLflow, then a summary table and the command that opens the UI.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vilocal_dist.paths import resolve_spec

DEMO_EXPERIMENT = "vilocal-demo"


@dataclass(frozen=True)
class DemoPreset:
    """Sizes of one demo run; ``default`` is meant to fit in 15 minutes on 2 CPU cores."""

    videos: int = 16  # composed source videos (a quarter, at least one, go to the test split)
    frames: int = 12
    size_h: int = 96  # composed and forged videos
    size_w: int = 160
    train_h: int = 64  # clips are resized to this for training and evaluation
    train_w: int = 112
    train_methods: tuple[str, ...] = ("telea", "iivi")  # seen in training
    unseen_methods: tuple[str, ...] = ("flowprop",)  # test-only: generalization to unseen methods
    iivi_iters: int = 60  # reconstruction iterations per video (tiny generator)
    # The laptop-scale protocol runs' detector settings (sweeps/experiments/laptop/): the paper's
    # stage-1 lr (a higher one collapsed the contrastive stage on a few videos), a faster stage 2
    # and α = 0.75 for hole pixels that are ~5% of a frame.
    model: str = "vilocal_small"
    stage1_epochs: int = 10
    stage2_epochs: int = 5
    stage1_lr: float = 5e-4
    stage2_lr: float = 5e-3
    alpha: float = 0.75
    workers: int = 2  # Ray Train workers (DDP over gloo on CPU)
    sweep: str = "lambda"  # which sub-sweep of sweeps/demo.yaml: lambda | tau | none
    sweep_samples: int = 2
    test_fraction: float = 0.25
    seed: int = 0
    method_cfgs: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False, compare=False)


PRESETS: dict[str, DemoPreset] = {
    "default": DemoPreset(),
    # For CI and the job-submission test: every stage, tiniest sizes, about a minute or two.
    "smoke": DemoPreset(
        videos=4, frames=6, size_h=32, size_w=48, train_h=32, train_w=48, train_methods=("telea",), unseen_methods=("ns",),
        model="vilocal_tiny", stage1_epochs=1, stage2_epochs=1, workers=1, sweep="lambda", sweep_samples=2,
    ),
}


class PeakMemory:
    """Samples the summed RSS of this process and all its descendants (Ray workers included)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _step(n: int, total: int, text: str) -> None:
    print(f"\n[demo {n}/{total}] {text}", flush=True)


def _forge(preset: DemoPreset, out: Path) -> Any:
    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs

    methods = [*preset.train_methods, *preset.unseen_methods]
    cfgs = {"iivi": {"preset": "tiny", "iters_recon": preset.iivi_iters, "iters_reg": 0}}
    cfgs = {m: {**cfgs.get(m, {}), **preset.method_cfgs.get(m, {})} for m in methods if m in cfgs or m in preset.method_cfgs}
    videos = expand_sources([], composed=preset.videos, frames=preset.frames,
                            size=(preset.size_h, preset.size_w), seed=preset.seed)
    jobs = plan_jobs(videos, methods, method_cfgs=cfgs, test_fraction=preset.test_fraction, seed=preset.seed)
    # A hash split of a handful of videos can leave the test split empty; the demo holds out the
    # last quarter of its source videos instead (still by source video, never by clip).
    n_test = max(1, round(preset.videos * preset.test_fraction))
    test_videos = {name for name, _ in videos[-n_test:]}
    for job in jobs:
        job["split"] = "test" if job["video"] in test_videos else "train"
    opts = ForgeOptions(out=str(out), seed=preset.seed, test_fraction=preset.test_fraction, retries=1)
    return forge(jobs, opts)


def _train(preset: DemoPreset, data: Path, run_name: str) -> list[Any]:
    from vilocal_dist.distributed.train import train
    from vilocal_dist.engines.config import TrainConfig

    cfg = TrainConfig(
        model=preset.model, size_h=preset.train_h, size_w=preset.train_w, batch_size=2, seed=preset.seed,
        val_fraction=0.2, stage1_epochs=preset.stage1_epochs, stage2_epochs=preset.stage2_epochs,
        stage1_lr=preset.stage1_lr, stage2_lr=preset.stage2_lr, stage2_min_lr=1e-4, alpha=preset.alpha,
    )
    return train("both", cfg, data, run_name=run_name, methods=list(preset.train_methods), workers=preset.workers)


def _fit_workers(preset: DemoPreset) -> DemoPreset:
    """The preset's Train workers cut to what the cluster can provide (a 1-GPU machine trains on
    one GPU worker rather than waiting forever for a second GPU)."""
    from vilocal_dist.distributed.resources import cluster_capacity, default_workers

    cap = cluster_capacity()
    workers = default_workers(preset.workers, cap.has_gpus, 1.0, cap)
    if workers != preset.workers:
        print(f"Train workers: {workers} instead of {preset.workers} ({cap.describe()})", flush=True)
    return replace(preset, workers=workers)


def _evaluate(preset: DemoPreset, checkpoint: str, data: Path) -> list[dict[str, Any]]:
    from vilocal_dist.engines.evaluate import evaluate_checkpoint

    scores = evaluate_checkpoint(Path(checkpoint) / "model.pt", data, split="test", progress=False)
    rows = []
    for method, s in sorted(scores.get("by_method", {}).items()):
        rows.append({
            "method": method,
            "seen": "seen" if method in preset.train_methods else "unseen",
            "test videos": s["videos"],
            "frames": s["frames"],
            "F1 (pooled)": s["pooled"]["f1"],
            "IoU (pooled)": s["pooled"]["iou"],
            "F1 (per video)": s["per_video"]["f1"],
        })
    base = scores["baselines"]
    rows.append({"method": "all methods", "seen": "", "test videos": scores["videos"], "frames": scores["frames"],
                 "F1 (pooled)": scores["pooled"]["f1"], "IoU (pooled)": scores["pooled"]["iou"],
                 "F1 (per video)": scores["per_video"]["f1"]})
    rows.append({"method": "trivial: all zeros", "seen": "", "test videos": scores["videos"], "frames": scores["frames"],
                 "F1 (pooled)": base["all_zeros"]["pooled"]["f1"], "IoU (pooled)": base["all_zeros"]["pooled"]["iou"],
                 "F1 (per video)": base["all_zeros"]["per_video"]["f1"]})
    rows.append({"method": "trivial: all ones", "seen": "", "test videos": scores["videos"], "frames": scores["frames"],
                 "F1 (pooled)": base["all_ones"]["pooled"]["f1"], "IoU (pooled)": base["all_ones"]["pooled"]["iou"],
                 "F1 (per video)": base["all_ones"]["per_video"]["f1"]})
    return rows


def _sweep(preset: DemoPreset) -> list[Any]:
    from vilocal_dist.distributed.sweep import run_spec_file

    spec = resolve_spec("demo.yaml")
    overrides = {"num_samples": preset.sweep_samples}
    if preset.sweep == "lambda":
        overrides.update({"data.frames": min(preset.frames, 6), "base.iters_recon": 30, "base.iters_reg": 30})
    return run_spec_file(spec, overrides, only=[preset.sweep], resume=True)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts → a markdown table (floats to 3 decimals)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def run_demo(preset: DemoPreset, out: Path, *, name: str = "demo") -> dict[str, Any]:
    """Run every stage; returns the summary (also written to ``out/summary.json``)."""
    import mlflow
    import ray

    from vilocal_dist.distributed.tuning import init_ray
    from vilocal_dist.tracking import log_json, mlflow_run, storage_path, tracking_uri, ui_command

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri()
    total = 6 if preset.sweep != "none" else 5
    start = time.perf_counter()
    timings: dict[str, float] = {}
    with PeakMemory() as mem:
        _step(1, total, f"starting Ray (local) · MLflow store {uri}")
        # Inside `ray job submit` RAY_ADDRESS names the cluster; otherwise a local Ray with enough
        # logical CPUs for the trainer's workers + a Tune driver (on 2 cores they time-share).
        init_ray(address=os.environ.get("RAY_ADDRESS"), num_cpus=max(os.cpu_count() or 2, preset.workers + 2))
        print(f"Ray resources: {ray.cluster_resources()}", flush=True)
        preset = _fit_workers(preset)
        # Each stage opens its own MLflow runs (forge/sweep parents, train stages); MLflow allows one
        # active run per process, so the demo's own summary run is written after them.
        t = time.perf_counter()
        methods = [*preset.train_methods, *preset.unseen_methods]
        _step(2, total, f"forging {preset.videos} composed videos × {len(methods)} methods "
                        f"({', '.join(methods)}) through the Tune fan-out → {out / 'forged'}")
        summary = _forge(preset, out / "forged")
        if summary.failed:
            raise RuntimeError(f"forge trials failed: {summary.failed}")
        timings["forge_s"] = time.perf_counter() - t

        t = time.perf_counter()
        _step(3, total, f"training ViLocal ({preset.model}) on {', '.join(preset.train_methods)}: "
                        f"stage 1 (contrastive) then stage 2 (focal) on {preset.workers} Ray Train worker(s)")
        outcomes = _train(preset, out / "forged", run_name=f"{name}-vilocal")
        timings["train_s"] = time.perf_counter() - t

        t = time.perf_counter()
        _step(4, total, "evaluating on held-out source videos, per inpainting method (seen and unseen)")
        rows = _evaluate(preset, outcomes[-1].checkpoint, out / "forged")
        timings["evaluate_s"] = time.perf_counter() - t

        sweep_info: dict[str, Any] = {}
        if preset.sweep != "none":
            t = time.perf_counter()
            _step(5, total, f"tiny Optuna sweep '{preset.sweep}' from sweeps/demo.yaml")
            for outcome in _sweep(preset):
                best = outcome.best or {}
                sweep_info = {"sweep": outcome.name, "metric": outcome.metric, "trials": len(outcome.rows),
                              "best_metric": best.get(outcome.metric),
                              "best_config": {k: best.get(k) for k in outcome.params},
                              "mlflow_parent_run": outcome.parent_run_id}
            timings["sweep_s"] = time.perf_counter() - t

        table = markdown_table(rows)
        result = {
            "preset": asdict(preset), "out": str(out), "tracking_uri": uri, "storage": storage_path(),
            "checkpoints": {f"stage{o.stage}": o.checkpoint for o in outcomes},
            "mlflow_runs": {f"stage{o.stage}": o.mlflow_run_id for o in outcomes},
            "forge": asdict(summary), "evaluation": rows, "sweep": sweep_info, "timings": timings,
        }
        with mlflow_run(DEMO_EXPERIMENT, name, params={"preset": asdict(preset), "out": str(out)}) as run:
            result["mlflow_runs"]["demo"] = run.info.run_id
            mlflow.log_text(table, "summary.md")
            log_json(result, "summary.json")
            mlflow.log_metrics({k.replace("_s", "_seconds"): v for k, v in timings.items()})
            for row in rows:
                key = row["method"].replace(" ", "_").replace(":", "")
                mlflow.log_metrics({f"test/{key}/f1": row["F1 (pooled)"], f"test/{key}/iou": row["IoU (pooled)"]})
    result["wall_s"] = time.perf_counter() - start
    result["peak_memory_gib"] = mem.peak / 2**30
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))

    _step(total, total, "done")
    print("\nDetection on held-out videos (pixel F1/IoU at 0.5; empty-GT frames: see report):\n")
    print(table)
    if sweep_info:
        print(f"\nSweep {sweep_info['sweep']}: {sweep_info['trials']} trials, best {sweep_info['metric']} = "
              f"{sweep_info['best_metric']} with {sweep_info['best_config']}")
    print(f"\nwall time {result['wall_s'] / 60:.1f} min · peak memory (driver + Ray processes) "
          f"{result['peak_memory_gib']:.2f} GiB")
    print(f"forged dataset: {out / 'forged'}\ncheckpoints: {result['checkpoints']}")
    print(f"summary: {out / 'summary.json'}\nMLflow store: {uri}\nopen the dashboard: {ui_command(uri)}")
    return result


def resolve_preset(name: str, **overrides: Any) -> DemoPreset:
    from vilocal_dist.errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown demo preset {name!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
