"""The benchmark suite: every benchmark of the package, each measurement in its own subprocess.

    vilocal bench [--only model,detect] [--quick] [--device auto|cpu|cuda] [--json] [--out FILE]

=========  =====================================================================================
model      stage-1 training step time and peak memory per preset and batch size (bench.model)
detect     detection frames/s and peak memory for a short and a long video (bench.detect)
inpaint    per-method speed through the shared interface; IIVI training steps/s (bench.inpaint)
fanout     forging throughput with 1 vs 2 concurrent Tune trials, per-trial overhead (bench.fanout)
decode     decode frames/s and streaming peak memory of a 480p H.264 file (bench.decode)
scale      the forge fan-out at 100 → 10,000 videos: driver cost per video, Tune state, manifest,
           MLflow, kill-and-resume (bench.scale; an hour or more: only with ``--only scale``)
=========  =====================================================================================

Why subprocesses: a process's peak memory never goes down, so measurements sharing a process
would each report the largest one before them. Every measurement here is a fresh
``python -m …`` child of this (light, torch-free) driver and reports VmHWM, its own peak.
``--quick`` shrinks every benchmark to a smoke run of seconds (tiny presets and videos).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

BENCHMARKS = ("model", "detect", "inpaint", "fanout", "decode")  # the default run
EXTRA = ("scale",)  # run when asked for by name


@dataclass(frozen=True)
class Plan:
    """What one benchmark measures in full and in quick mode."""

    full: dict[str, Any]
    quick: dict[str, Any]


PLANS = {
    # "detector": the `vilocal` network against the same network with the authors' attention, at
    # the sizes of issue 18 (inference 5x240x432, training step batch 1 at 5x120x216).
    "model": Plan(
        full={"presets": ["vilocal_tiny", "vilocal_small", "vilocal"], "batches": [1, 2], "size": [240, 432], "steps": 2,
              "detector": {"preset": "vilocal", "frames": 5, "infer_size": [240, 432], "repeats": 2,
                           "train_size": [120, 216], "train_batch": 1, "steps": 2}},
        quick={"presets": ["vilocal_tiny"], "batches": [1, 2], "size": [32, 48], "steps": 1,
               "detector": {"preset": "vilocal_tiny", "frames": 5, "infer_size": [32, 48], "repeats": 1,
                            "train_size": [32, 48], "train_batch": 1, "steps": 1}},
    ),
    "detect": Plan(
        full={"lengths": [30, 300], "preset": "vilocal_small", "size": [240, 432]},
        quick={"lengths": [6, 18], "preset": "vilocal_tiny", "size": [32, 48]},
    ),
    # IIVI's training-step rate (presets × with/without regularisers) comes from bench.inpaint;
    # every method is also timed once end to end through the shared interface.
    "inpaint": Plan(
        full={"frames": 24, "size": [240, 432], "iivi_args": [], "methods": {
            "telea": {}, "ns": {}, "flowprop": {}, "intervi": {"iterations": 200},
            "iivi": {"iters_recon": 50, "iters_reg": 20, "random_vgg": True}}},
        quick={"frames": 6, "size": [32, 48], "iivi_args": ["--only", "tiny", "--iters", "2", "--batch", "2"],
               "methods": {"telea": {}, "ns": {}, "flowprop": {}, "intervi": {"preset": "tiny", "iterations": 6},
                           "iivi": {"preset": "tiny", "iters_recon": 3, "iters_reg": 2, "random_vgg": True}}},
    ),
    "fanout": Plan(
        full={"args": []},
        quick={"args": ["--videos", "2", "--frames", "4", "--size", "32x48", "--noop-trials", "2"]},
    ),
    "decode": Plan(full={"args": ["--frames", "300"]}, quick={"args": ["--frames", "30", "--repeats", "1"]}),
    "scale": Plan(full={"args": ["--n", "100,1000,10000"]},
                  quick={"args": ["--n", "50", "--control-n", "0", "--server-n", "0", "--resume-n", "0"]}),
}


# ----------------------------------------------------------------------------- children


def _json_child(argv: Sequence[str], timeout: float | None) -> dict[str, Any]:
    """Run ``python -m …argv`` and parse the JSON on its last stdout line."""
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:1])} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(kind: str, params: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    return _json_child(["vilocal_dist.bench.suite", "--measure", json.dumps([kind, params])], timeout)


def measure_train_step(params: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: one bench.model training-step measurement, plus this process's VmHWM."""
    from vilocal_dist.bench.detect import peak_rss_mib
    from vilocal_dist.bench.model import train_step_benchmark

    result = train_step_benchmark(params["preset"], params["batch"], tuple(params["size"]), steps=params["steps"],
                                  device=params["device"], isolate=False)
    return {**result, "vmhwm_mib": round(peak_rss_mib(), 1)}


def measure_inpaint(params: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: one method on one composed video through the shared interface."""
    from vilocal_dist.bench.detect import current_rss_mib, peak_rss_mib
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.inpaint.registry import get_method

    video = compose_video(0, params["frames"], tuple(params["size"]))
    method = get_method(params["method"])
    baseline = current_rss_mib()
    start = time.perf_counter()
    result = method(video.frames, video.masks, dict(params["cfg"]), seed=0, progress=False)
    seconds = time.perf_counter() - start
    out = {"method": params["method"], "frames": params["frames"], "size": params["size"], "seconds": round(seconds, 3),
           "frames_per_s": round(params["frames"] / seconds, 2), "baseline_rss_mib": round(baseline, 1),
           "peak_rss_mib": round(peak_rss_mib(), 1)}
    iterations = result.metrics.get("train/iters") or result.metrics.get("train/updates")
    if iterations:
        # The method's own rate (its training loop only) when it reports one; the wall-clock rate
        # also pays one-time set-up (network construction, first-call imports).
        own = result.metrics.get("train/iters_per_s")
        out.update(iterations=int(iterations), wall_iterations_per_s=round(iterations / seconds, 3),
                   iterations_per_s=round(own if own else iterations / seconds, 3))
    return out


MEASURES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "train_step": measure_train_step, "inpaint": measure_inpaint,
}


# ----------------------------------------------------------------------------- benchmarks


def bench_model(plan: dict[str, Any], device: str, timeout: float | None) -> dict[str, Any]:
    runs = [_measure("train_step", {"preset": p, "batch": b, "size": plan["size"], "steps": plan["steps"],
                                    "device": device}, timeout)
            for p in plan["presets"] for b in plan["batches"]]
    keep = ("preset", "batch", "size", "steps", "step_s", "cpu_s", "peak_rss_mb", "cuda_peak_mb", "vmhwm_mib",
            "encoder_params", "checkpoint", "recompute", "device", "threads")
    return {"runs": [{k: r[k] for k in keep if k in r} for r in runs],
            "detector": bench_detector(plan["detector"], device, timeout)}


def _detector_work(kind: str, plan: dict[str, Any], attention: str, device: str, timeout: float | None) -> dict:
    """One inference or training-step measurement of the detector in a fresh process."""
    if kind == "infer":
        params = {"preset": plan["preset"], "batch": 1, "size": plan["infer_size"], "frames": plan["frames"],
                  "repeats": plan["repeats"], "device": device, "attention": attention}
    else:
        params = {"preset": plan["preset"], "batch": plan["train_batch"], "size": plan["train_size"],
                  "frames": plan["frames"], "steps": plan["steps"], "warmup": 1, "device": device,
                  "checkpoint": "auto", "attention": attention}
    return _json_child(["vilocal_dist.bench.model", "--worker", json.dumps([kind, params])], timeout)


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant figures: tiny quick-suite steps take milliseconds, and
    rounding them to fixed decimals would distort the ratios printed beside them."""
    return float(f"{x:.{digits}g}")


def bench_detector(plan: dict[str, Any], device: str, timeout: float | None) -> dict[str, Any]:
    """Inference and training step against the authors' attention; rates against the matmul peak.

    ``speedup_vs_authors`` = authors' seconds / ours (memory likewise); ``share_of_peak`` = the
    model's FLOPs per second over this machine's matmul peak in the precision the attention ran.
    """
    flops = [{"preset": plan["preset"], "batch": 1, "frames": plan["frames"], "size": plan["infer_size"], "train": False},
             {"preset": plan["preset"], "batch": plan["train_batch"], "frames": plan["frames"],
              "size": plan["train_size"], "train": True}]
    rates = _json_child(["vilocal_dist.bench.model", "--worker", json.dumps(["rates", {"device": device,
                                                                                       "flops": flops}])], timeout)
    peaks = {name: p["gflops"] for name, p in rates["matmul_peak"].items()}
    out: dict[str, Any] = {"preset": plan["preset"], "matmul_peak_gflops": peaks}
    for kind, gflop in zip(("infer", "train"), rates["gflop"]):
        ours, authors = (_detector_work(kind, plan, a, device, timeout) for a in ("fast", "authors"))
        seconds = ours["s_per_clip"] if kind == "infer" else ours["step_s"]
        base_seconds = authors["s_per_clip"] if kind == "infer" else authors["step_s"]
        precision = ours.get("precision", "fp32") if kind == "infer" else "fp32"
        out[kind] = {
            "size": ours["size"], "batch": ours["batch"], "frames": ours["frames"], "seconds": _sig(seconds),
            "cpu_seconds": _sig(ours["cpu_s_per_clip" if kind == "infer" else "cpu_s"]),
            "peak_mib": ours["vmhwm_mib"], "precision": precision, "recompute": ours.get("recompute"),
            "authors_seconds": _sig(base_seconds), "authors_peak_mib": authors["vmhwm_mib"],
            "speedup_vs_authors": round(base_seconds / seconds, 2),
            "memory_vs_authors": round(ours["vmhwm_mib"] / authors["vmhwm_mib"], 2),
            "gflop": round(gflop, 4), "gflops": round(gflop / seconds, 3),
            "share_of_peak": round(gflop / seconds / peaks[precision], 4),
            "load_avg_1m": round(ours["load_avg_1m_end"], 2),
        }
    return out


def bench_detect(plan: dict[str, Any], device: str, timeout: float | None) -> dict[str, Any]:
    size = f"{plan['size'][0]}x{plan['size'][1]}"
    return _json_child(["vilocal_dist.bench.detect", "--lengths", *map(str, plan["lengths"]), "--preset",
                        plan["preset"], "--size", size, "--device", device, "--json"], timeout)


def bench_inpaint(plan: dict[str, Any], device: str, timeout: float | None) -> dict[str, Any]:
    runs = []
    for name, cfg in plan["methods"].items():
        if name in ("iivi", "intervi"):
            cfg = {**cfg, "device": device}
        runs.append(_measure("inpaint", {"method": name, "cfg": cfg, "frames": plan["frames"], "size": plan["size"]},
                             timeout))
    iivi = _json_child(["vilocal_dist.bench.inpaint", *plan["iivi_args"], "--device", device, "--json"], timeout)
    return {"runs": runs, "iivi_steps": iivi["runs"]}


def bench_fanout(plan: dict[str, Any], device: str, timeout: float | None) -> dict[str, Any]:
    return _json_child(["vilocal_dist.bench.fanout", *plan["args"], "--json"], timeout)


def bench_decode(plan: dict[str, Any], device: str, timeout: float | None) -> dict[str, Any]:
    return _json_child(["vilocal_dist.bench.decode", *plan["args"], "--json"], timeout)


def bench_scale(plan: dict[str, Any], device: str, timeout: float | None) -> dict[str, Any]:
    return _json_child(["vilocal_dist.bench.scale", *plan["args"], "--json"], timeout)


RUNNERS = {"model": bench_model, "detect": bench_detect, "inpaint": bench_inpaint, "fanout": bench_fanout,
           "decode": bench_decode, "scale": bench_scale}


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU (asked in a child: this driver stays torch-free)."""
    if device != "auto":
        return device
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True)
    return "cuda" if probe.stdout.strip() == "True" else "cpu"


def run_suite(
    only: Sequence[str] | None = None, *, quick: bool = False, device: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the selected benchmarks; returns {"suite": context, <name>: result, ..., "errors": {...}}.

    A benchmark that fails is reported under ``errors`` and the others still run.
    """
    names = list(only or BENCHMARKS)
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS + EXTRA)}")
    device = resolve_device(device)
    timeout = 900 if quick else None
    started = time.time()
    out: dict[str, Any] = {"suite": {
        "quick": quick, "device": device, "benchmarks": names, "python": platform.python_version(),
        "host": platform.node(), "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }}
    errors: dict[str, str] = {}
    for name in names:
        if progress:
            progress(name)
        plan = PLANS[name].quick if quick else PLANS[name].full
        begin = time.perf_counter()
        try:
            out[name] = {**RUNNERS[name](plan, device, timeout), "bench_seconds": round(time.perf_counter() - begin, 1)}
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    out["suite"]["seconds"] = round(time.time() - started, 1)
    out["errors"] = errors
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A short human-readable table of a suite result."""
    lines = [f"device {result['suite']['device']}, {result['suite']['cpu_count']} CPUs, load "
             f"{result['suite']['load_avg_1m']}{', quick' if result['suite']['quick'] else ''}"]
    if "model" in result:
        for r in result["model"]["runs"]:
            peak = r.get("cuda_peak_mb") or r.get("vmhwm_mib")
            lines.append(f"model    {r['preset']:<14} batch {r['batch']}  {r['step_s']:.3f} s/step  "
                         f"peak {peak:.0f} MiB{' (CUDA)' if 'cuda_peak_mb' in r else ''}")
        detector = result["model"].get("detector")
        for kind in ("infer", "train") if detector else ():
            d = detector[kind]
            lines.append(f"model    {detector['preset']} {kind} {d['seconds']:.3f} s  peak {d['peak_mib']:.0f} MiB  "
                         f"x{d['speedup_vs_authors']} vs authors' attention ({d['authors_seconds']:.3f} s, "
                         f"{d['authors_peak_mib']:.0f} MiB)  {d['share_of_peak']:.0%} of {d['precision']} matmul peak")
    if "detect" in result:
        for r in result["detect"]["runs"]:
            lines.append(f"detect   {r['frames']:>4} frames  {r['fps']:.1f} frames/s  peak {r['peak_rss_mib']:.0f} MiB")
    if "inpaint" in result:
        for r in result["inpaint"]["runs"]:
            rate = f"{r['iterations_per_s']:.2f} it/s" if "iterations_per_s" in r else f"{r['frames_per_s']:.1f} frames/s"
            lines.append(f"inpaint  {r['method']:<10} {rate}  ({r['seconds']:.1f} s)  peak {r['peak_rss_mib']:.0f} MiB")
        for r in result["inpaint"].get("iivi_steps", []):
            lines.append(f"inpaint  iivi {r['preset']} {r['size'][0]}x{r['size'][1]} "
                         f"{'with' if r['regularizers'] else 'without'} regularisers  {r['iters_per_s']:.2f} it/s  "
                         f"peak {r['peak_mem_mb']:.0f} MiB")
    if "fanout" in result:
        f = result["fanout"]
        lines.append(f"fanout   1 trial {f['one_trial']['videos_per_s']:.2f} videos/s, 2 trials "
                     f"{f['two_trials']['videos_per_s']:.2f} videos/s (x{f['speedup']}), {f['trial_overhead_s']} s/trial")
    if "decode" in result:
        d = result["decode"]
        lines.append(f"decode   {d['width']}x{d['height']} {d['codec']}  {d['decode_fps']} frames/s  "
                     f"peak {d['peak_rss_mib']} MiB")
    for r in result.get("scale", {}).get("cases", []):
        lines.append(f"scale    {r['n']:>6} videos  {r['videos_per_trial']:>2}/trial  {r['tracking']:<6}  "
                     f"{r['overhead_per_video_s']:.3f} s/video overhead  driver {r['driver_peak_rss_mib']:.0f} MiB"
                     + (f"  resume: {r['redone']} redone" if r["resume"] else ""))
    lines += [f"ERROR    {name}: {message.splitlines()[0][:160]}" for name, message in result["errors"].items()]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m vilocal_dist.bench.suite --measure '[KIND, PARAMS]'``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--measure":
        print("usage: vilocal bench …  (this module's own entry point only runs one measurement)", file=sys.stderr)
        return 2
    kind, params = json.loads(args[1])
    print(json.dumps(MEASURES[kind](params)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
