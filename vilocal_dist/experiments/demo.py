"""`vilocal demo`: the whole system once, on built-in composed videos, on a laptop.

composed videos → forged dataset via the Tune fan-out (several inpainting methods) → stage 1
(contrastive) → stage 2 (focal) on Ray Train → evaluation per method, seen and unseen → a tiny
Optuna sweep → everything in MLflow, then a summary table and the command that opens the UI.

A preset is an experiment spec (``sweeps/experiments/demo-NAME.yaml``) with the protocols'
sections (``data``, ``methods``, ``method_cfgs``, ``train``, ``workers``), read through the same
checks (``experiments.common.parse_setup``) and forged by the same code (``forge_videos``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vilocal_dist.config import apply_sets, closest, load_yaml
from vilocal_dist.errors import ConfigError
from vilocal_dist.experiments.common import (
    COMMON_KEYS,
    SETUP_KEYS,
    Setup,
    check_keys,
    forge_videos,
    method_list,
    parse_setup,
    spec_file,
)

DEMO_EXPERIMENT = "vilocal-demo"
#: The demo's presets: ``sweeps/experiments/demo-NAME.yaml``.
PRESETS = ("default", "smoke")
SWEEPS = ("lambda", "tau", "none")


@dataclass(frozen=True)
class DemoSpec:
    """One demo run, checked once when read: the protocols' shared sections (``setup``) plus which
    methods training sees and which sub-sweep of ``sweeps/demo.yaml`` runs, with its overrides."""

    setup: Setup
    train_on: tuple[str, ...]  # seen in training; the other forged methods are test-only (unseen)
    sweep: str  # lambda | tau | none
    sweep_set: Mapping[str, Mapping[str, Any]]  # sub-sweep -> its --set overrides
    description: str = ""

    @property
    def unseen(self) -> tuple[str, ...]:
        return tuple(m for m in self.setup.methods if m not in self.train_on)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def validate(raw: Mapping[str, Any], source: str | Path | None) -> DemoSpec:
    """The demo spec from its resolved YAML mapping (unknown keys and bad values name ``source``)."""
    check_keys(raw, COMMON_KEYS + SETUP_KEYS + ("train_on", "sweep", "sweep_set"), "", source)
    setup = parse_setup(raw, source)
    train_on = method_list(raw.get("train_on"), "train_on", source, known=setup.methods)
    sweep = raw.get("sweep", "none")
    if sweep not in SWEEPS:
        raise ConfigError(f"sweep: must be one of {', '.join(SWEEPS)}, got {sweep!r}", source)
    sweep_set = check_keys(raw.get("sweep_set") or {}, SWEEPS[:2], "sweep_set", source)
    return DemoSpec(setup, train_on, sweep, {k: dict(v or {}) for k, v in sweep_set.items()},
                    str(raw.get("description", "")))


def resolve_preset(name: str, overrides: Mapping[str, Any] | None = None) -> DemoSpec:
    """The demo spec of preset ``name`` with ``--set`` ``overrides`` applied, checked."""
    if name not in PRESETS:
        raise ConfigError(f"unknown demo preset {name!r}{closest(name, PRESETS)}; known: {', '.join(PRESETS)}")
    path = spec_file(f"experiments/demo-{name}.yaml")
    return validate(apply_sets(load_yaml(path, "demo spec"), overrides or {}, path), path)


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
    from vilocal_dist.console import phase

    phase(f"[demo {n}/{total}] {text}")


def _train(spec: DemoSpec, data: Path, run_name: str) -> list[Any]:
    from vilocal_dist.distributed.train import fit_workers, train

    return train("both", spec.setup.train, data, run_name=run_name, methods=list(spec.train_on),
                 workers=fit_workers(spec.setup.workers), register=True)


def _evaluate(spec: DemoSpec, checkpoint: str, data: Path, model_ref: str) -> list[dict[str, Any]]:
    from vilocal_dist.engines.evaluate import evaluate_checkpoint
    from vilocal_dist.tracking.model_registry import record_evaluation

    scores = evaluate_checkpoint(Path(checkpoint) / "model.pt", data, split="test", progress=False)
    record_evaluation(model_ref or checkpoint, data, scores, split="test")
    rows = []
    def columns(s: dict[str, Any]) -> dict[str, float]:
        # "mean per frame" is the paper's figure; "pixel-pooled" sums TP/FP/FN over every frame.
        return {"F1 (mean per frame)": s["pooled"]["f1"], "IoU (mean per frame)": s["pooled"]["iou"],
                "F1 (pixel-pooled)": s["pixel_pooled"]["f1"], "F1 (per video)": s["per_video"]["f1"]}  # fmt: skip

    for method, s in sorted(scores.get("by_method", {}).items()):
        rows.append({"method": method, "seen": "seen" if method in spec.train_on else "unseen",
                     "test videos": s["videos"], "frames": s["frames"], **columns(s)})  # fmt: skip
    base = scores["baselines"]
    count = {"seen": "", "test videos": scores["videos"], "frames": scores["frames"]}
    rows.append({"method": "all methods", **count, **columns(scores)})
    rows.append({"method": "trivial: all zeros", **count, **columns(base["all_zeros"])})
    rows.append({"method": "trivial: all ones", **count, **columns(base["all_ones"])})
    return rows


def fill_quality(forged: Path) -> dict[str, dict[str, float]]:
    """Per forging method: mean hole PSNR (dB) of its videos against the composed videos' clean
    backgrounds, its mean wall time per video, and the iterations its internal fits ran."""
    from vilocal_dist.data.manifest import ForgedDataset
    from vilocal_dist.data.sources import load_video, open_source
    from vilocal_dist.inpaint.selfval import holdout_psnr

    dataset = ForgedDataset(forged)
    per: dict[str, list[tuple[float, float, float]]] = {}
    for record in dataset.records():
        src = open_source(record["source"])
        if not src.has_backgrounds:
            continue
        frames, masks = load_video(dataset.video_dir(record["id"]))
        gt = np.stack(list(src.iter_backgrounds((record["height"], record["width"])))[: len(frames)])
        iters = (record.get("metrics") or {}).get("train/iters", math.nan)
        per.setdefault(record["method"], []).append((holdout_psnr(frames, gt, masks), record.get("seconds", math.nan), iters))
    return {m: dict(zip(("hole_psnr", "seconds", "iterations"), (float(np.mean(c)) for c in zip(*v))))
            for m, v in sorted(per.items())}  # fmt: skip


def budget_note(spec: DemoSpec, quality: Mapping[str, Mapping[str, float]]) -> str:
    """What the forgers' fills cost and scored here, and what budget the internal methods ran."""
    parts = [f"{m} {q['hole_psnr']:.1f} dB ({q['seconds']:.1f} s/video)" for m, q in quality.items()]
    text = "Fill quality of the forgers on these videos (hole PSNR against the clean backgrounds): " + ", ".join(parts)
    if "iivi" in quality and math.isfinite(quality["iivi"]["iterations"]):
        cfg = spec.setup.method_cfgs.get("iivi") or {}
        text += (f".\nIIVI ran a fixed demo budget of {quality['iivi']['iterations']:.0f} iterations per video "
                 f"(preset {cfg.get('preset', 'paper')}, iters_recon={cfg.get('iters_recon')}, iters_reg={cfg.get('iters_reg')}), "
                 "far from converged: run to its stopping rule it takes thousands of iterations (minutes per video "
                 "on 2 cores) and then fills composed object masks as well as flow propagation (README, "
                 "'Inpainting quality').")  # fmt: skip
    return text


def _sweep(spec: DemoSpec) -> list[Any]:
    from vilocal_dist.distributed.sweep import run_spec_file

    overrides = spec.sweep_set.get(spec.sweep, {})
    return run_spec_file(spec_file("demo.yaml"), overrides, only=[spec.sweep], resume=True)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of dicts → a markdown table (floats to 3 decimals)."""
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def run_demo(spec: DemoSpec, out: Path, *, name: str = "demo") -> dict[str, Any]:
    """Run every stage; returns the summary (also written to ``out/summary.json``)."""
    import mlflow
    import ray

    from vilocal_dist.distributed.tuning import init_ray
    from vilocal_dist.tracking import log_json, mlflow_run, storage_path, tracking_uri, ui_command

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri()
    total = 6 if spec.sweep != "none" else 5
    setup = spec.setup
    start = time.perf_counter()
    timings: dict[str, float] = {}
    with PeakMemory() as mem:
        _step(1, total, f"starting Ray (local) · MLflow store {uri}")
        # Inside `ray job submit` RAY_ADDRESS names the cluster; otherwise a local Ray with enough
        # logical CPUs for the trainer's workers + a Tune driver (on 2 cores they time-share).
        init_ray(address=os.environ.get("RAY_ADDRESS"), num_cpus=max(os.cpu_count() or 2, setup.workers + 2))
        print(f"Ray resources: {ray.cluster_resources()}", flush=True)
        # Each stage opens its own MLflow runs (forge/sweep parents, train stages); MLflow allows one
        # active run per process, so the demo's own summary run is written after them.
        t = time.perf_counter()
        methods = setup.methods
        _step(2, total, f"forging {setup.data.composed} composed videos × {len(methods)} methods "
                        f"({', '.join(methods)}) through the Tune fan-out → {out / 'forged'}")
        summary = forge_videos(out / "forged", setup.data, methods, setup.method_cfgs, hold_out_last=True)
        if summary.failed:
            raise RuntimeError(f"forge trials failed: {summary.failed}")
        timings["forge_s"] = time.perf_counter() - t
        quality = fill_quality(out / "forged")

        t = time.perf_counter()
        _step(3, total, f"training ViLocal ({setup.train.model}) on {', '.join(spec.train_on)}: "
                        f"stage 1 (contrastive) then stage 2 (focal) on {setup.workers} Ray Train worker(s)")
        outcomes = _train(spec, out / "forged", run_name=f"{name}-vilocal")
        timings["train_s"] = time.perf_counter() - t

        t = time.perf_counter()
        _step(4, total, "evaluating on held-out source videos, per inpainting method (seen and unseen)")
        rows = _evaluate(spec, outcomes[-1].checkpoint, out / "forged", outcomes[-1].registered_model)
        timings["evaluate_s"] = time.perf_counter() - t

        sweep_info: dict[str, Any] = {}
        if spec.sweep != "none":
            t = time.perf_counter()
            _step(5, total, f"tiny Optuna sweep '{spec.sweep}' from sweeps/demo.yaml")
            for outcome in _sweep(spec):
                best = outcome.best or {}
                sweep_info = {"sweep": outcome.name, "metric": outcome.metric, "trials": len(outcome.rows),
                              "best_metric": best.get(outcome.metric),
                              "best_config": {k: best.get(k) for k in outcome.params},
                              "mlflow_parent_run": outcome.parent_run_id}
            timings["sweep_s"] = time.perf_counter() - t

        table = markdown_table(rows)
        result = {
            "preset": spec.to_dict(), "out": str(out), "tracking_uri": uri, "storage": storage_path(),
            "checkpoints": {f"stage{o.stage}": o.checkpoint for o in outcomes},
            "mlflow_runs": {f"stage{o.stage}": o.mlflow_run_id for o in outcomes},
            "forge": dataclasses.asdict(summary), "evaluation": rows, "sweep": sweep_info, "timings": timings,
            "fill_quality": quality,
        }
        with mlflow_run(DEMO_EXPERIMENT, name, params={"preset": spec.to_dict(), "out": str(out)}) as run:
            result["mlflow_runs"]["demo"] = run.info.run_id
            mlflow.log_text(table, "summary.md")
            log_json(result, "summary.json")
            mlflow.log_metrics({k.replace("_s", "_seconds"): v for k, v in timings.items()})
            for row in rows:
                key = row["method"].replace(" ", "_").replace(":", "")
                mlflow.log_metrics({f"test/{key}/f1": row["F1 (mean per frame)"], f"test/{key}/iou": row["IoU (mean per frame)"]})
    result["wall_s"] = time.perf_counter() - start
    result["peak_memory_gib"] = mem.peak / 2**30
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))

    _step(total, total, "done")
    print("\nDetection on held-out videos (pixel F1/IoU at 0.5; empty-GT frames: see report):\n")
    print(table)
    if quality:
        print("\n" + budget_note(spec, quality))
    if sweep_info:
        best = {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in sweep_info["best_config"].items()}
        metric = sweep_info["best_metric"]
        shown = f"{metric:.2f}" if isinstance(metric, float) else metric
        print(f"\nSweep {sweep_info['sweep']}: {sweep_info['trials']} trials, best {sweep_info['metric']} = {shown} "
              f"with {best}")
    print(f"\nwall time {result['wall_s'] / 60:.1f} min · peak memory (driver + Ray processes) "
          f"{result['peak_memory_gib']:.2f} GiB")
    print(f"forged dataset: {out / 'forged'}\ncheckpoints: {result['checkpoints']}")
    if outcomes[-1].registered_model:
        print(f"registered model: {outcomes[-1].registered_model} (vilocal detect VIDEO --model … --out DIR)")
    print(f"summary: {out / 'summary.json'}\nMLflow store: {uri}\nopen the dashboard: {ui_command(uri)}")
    return result
