"""Speed and peak memory of the ViLocal detector: one stage-1 training step and clip inference.

    python -m vilocal_dist.bench.model --preset vilocal --batch 2 --json
    python -m vilocal_dist.bench.model --preset vilocal_tiny --mode infer

Each measurement runs in a fresh Python subprocess, so its peak RSS (``getrusage`` max RSS) covers
that measurement alone and nothing allocated by an earlier one. Peak RSS includes the interpreter
and torch (``baseline_rss_mb``, measured after building the model and its input, is reported
beside it). On CUDA the peak is ``torch.cuda.max_memory_allocated``. Wall time on a shared machine
depends on what else runs, so ``cpu_s`` (process CPU seconds per step/clip, all threads) and the
load average are reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch

from vilocal_dist.bench.detect import peak_rss_mib
from vilocal_dist.losses.contrastive import pixel_contrastive_loss
from vilocal_dist.models import autocast_context, count_parameters, create_model, get_config
from vilocal_dist.models.attention import attention_impl, use_bf16_inference
from vilocal_dist.models.memory import CHECKPOINT_MODES, DEFAULT_BUDGET_GIB, checkpoint_overrides


def _checkpoint_overrides(mode: str, preset: str, batch: int, frames: int, size: tuple[int, int],
                          budget_gib: float) -> dict[str, bool]:
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_MODES}, got {mode!r}")
    return checkpoint_overrides(mode, get_config(preset), batch, frames, size, budget_gib * 2**30)


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_mb(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    # ru_maxrss is in KiB on Linux.
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _context(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "load_avg_1m_end": os.getloadavg()[0],
        "torch": torch.__version__,
    }


def _clip(batch: int, frames: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, frames, *size, generator=gen).to(device)


def _train_step_in_process(
    preset: str, batch: int, size: tuple[int, int], frames: int, steps: int, checkpoint: str,
    device: str, warmup: int, attention: str = "fast", budget_gib: float = DEFAULT_BUDGET_GIB,
) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    dev = torch.device(device)
    overrides = _checkpoint_overrides(checkpoint, preset, batch, frames, size, budget_gib)
    model = create_model(preset, **overrides).to(dev).train()
    encoder = model.encoder
    optim = torch.optim.AdamW(encoder.parameters(), lr=5e-4, weight_decay=1e-4)
    clip = _clip(batch, frames, size, dev)
    masks = torch.zeros(batch, *size, dtype=torch.bool, device=dev)
    masks[:, size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = True  # a forged box
    baseline = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def step() -> float:
        optim.zero_grad(set_to_none=True)
        with autocast_context(dev):
            features = encoder(clip)
        out = pixel_contrastive_loss(features, masks, temperature=0.1)
        out["loss"].backward()
        optim.step()
        _sync(dev)
        return float(out["loss"].detach())

    with attention_impl(attention):
        for _ in range(warmup):  # first-call allocations and kernel selection are not what we time
            step()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            loss = step()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    recompute = [k for k, on in overrides.items() if on]
    return {
        "mode": "train", "preset": preset, "batch": batch, "frames": frames, "size": list(size),
        "checkpoint": checkpoint, "attention": attention,
        "recompute": recompute[0].removeprefix("checkpoint_") if recompute else "none",
        "budget_gib": budget_gib, "warmup": warmup, "steps": steps, "step_s": wall / steps,
        "cpu_s": cpu / steps, "loss": loss, "encoder_params": count_parameters(encoder),
        "baseline_rss_mb": baseline, **_peak_mb(dev), **_context(dev),
        "load_avg_1m_start": load_start,
    }


def _inference_in_process(
    preset: str, batch: int, size: tuple[int, int], frames: int, repeats: int, device: str,
    attention: str = "fast", precision: str = "auto",
) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    dev = torch.device(device)
    model = create_model(preset).to(dev).eval()
    clip = _clip(batch, frames, size, dev)
    baseline = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode(), autocast_context(dev), attention_impl(attention, precision):
        bf16 = use_bf16_inference(dev) or dev.type == "cuda"
        model(clip)  # warm-up
        _sync(dev)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            torch.sigmoid(model(clip)["pred_mask"])
        _sync(dev)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    clips = batch * repeats
    return {
        "mode": "infer", "preset": preset, "batch": batch, "frames": frames, "size": list(size),
        "attention": attention, "precision": "bf16" if bf16 else "fp32", "repeats": repeats, "clips_per_s": clips / wall, "s_per_clip": wall / clips,
        "cpu_s_per_clip": cpu / clips, "baseline_rss_mb": baseline, **_peak_mb(dev),
        **_context(dev), "load_avg_1m_start": load_start,
    }


def matmul_peak_gflops(dtype: torch.dtype, device: str = "cpu", *, max_size: int = 2048,
                       min_seconds: float = 0.2) -> dict[str, float]:
    """This machine's square-matmul rate in ``dtype``: the best of three calls at the largest size
    (doubling from 128 up to ``max_size``) one of which takes under ``min_seconds``, so a CPU that
    emulates bf16 (hundreds of times slower) is measured at a small size instead of for minutes."""
    dev, size, best = torch.device(device), 128, 0.0
    while True:
        a, b = (torch.randn(size, size, device=dev).to(dtype) for _ in range(2))
        times = []
        for _ in range(3):
            _sync(dev)
            start = time.perf_counter()
            a @ b
            _sync(dev)
            times.append(time.perf_counter() - start)
        best = max(best, 2 * size**3 / min(times) / 1e9)
        if size >= max_size or min(times) >= min_seconds:
            return {"gflops": round(best, 2), "size": size}
        size *= 2


def model_gflop(preset: str, batch: int, frames: int, size: tuple[int, int], *, train: bool) -> float:
    """FLOPs (GFLOP) of one inference (model) or training step (encoder forward and backward), as
    the algorithm needs them (the recomputation of checkpointing is not counted). Counted on the
    meta device: shapes only."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = create_model(preset).train(train)
        clip = torch.empty(batch, 3, frames, *size)
    with FlopCounterMode(display=False) as counter:
        if train:
            model.encoder(clip).sum().backward()
        else:
            with torch.no_grad():
                model(clip)
    return counter.get_total_flops() / 1e9


def _rates_in_process(device: str, flops: list[dict[str, Any]]) -> dict[str, Any]:
    """The machine's matmul peaks and the GFLOP of each ``model_gflop(**kwargs)`` in ``flops``."""
    peaks = {name: matmul_peak_gflops(dtype, device) for name, dtype in
             (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    return {"matmul_peak": peaks, "gflop": [model_gflop(**{**f, "size": tuple(f["size"])}) for f in flops]}


_WORKERS = {"train": _train_step_in_process, "infer": _inference_in_process, "rates": _rates_in_process}


def _in_subprocess(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "vilocal_dist.bench.model", "--worker", json.dumps([kind, params])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_step_benchmark(
    preset: str = "vilocal", batch: int = 2, size: tuple[int, int] = (240, 432), *,
    frames: int = 5, steps: int = 2, checkpoint: str = "auto", device: str = "cpu",
    warmup: int = 1, isolate: bool = True, attention: str = "fast",
    budget_gib: float = DEFAULT_BUDGET_GIB,
) -> dict[str, Any]:
    """Time a stage-1 step (encoder forward, contrastive loss, backward, AdamW) after ``warmup``
    untimed steps (0 is fine when one step takes minutes: the first-step overhead is then small).

    Returns ``step_s`` (wall seconds per step), ``cpu_s`` and ``peak_rss_mb`` (CPU) or
    ``cuda_peak_mb`` (CUDA). ``checkpoint``: "none", "attention" (SABlocks), "all" blocks or
    "auto" (the least recomputation whose estimate fits ``budget_gib``; ``recompute`` says which).
    ``attention``: "fast" or "authors" (explicit softmax(QKᵀ)V, the baseline).
    ``isolate`` runs it in a fresh subprocess so the peak belongs to this measurement only.
    """
    if checkpoint not in CHECKPOINT_MODES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_MODES}, got {checkpoint!r}")
    params = dict(preset=preset, batch=batch, size=tuple(size), frames=frames, steps=steps,
                  checkpoint=checkpoint, device=device, warmup=warmup, attention=attention,
                  budget_gib=budget_gib)
    return _in_subprocess("train", params) if isolate else _train_step_in_process(**params)


def inference_benchmark(
    preset: str = "vilocal", batch: int = 1, size: tuple[int, int] = (240, 432), *,
    frames: int = 5, repeats: int = 3, device: str = "cpu", isolate: bool = True,
    attention: str = "fast", precision: str = "auto",
) -> dict[str, Any]:
    """Time ``model(clip)`` + sigmoid under ``torch.inference_mode`` after one warm-up.

    Returns ``clips_per_s``, ``s_per_clip``, ``cpu_s_per_clip`` and the peak memory as above.
    ``attention`` as for `train_step_benchmark`; ``precision`` of CPU attention: "auto" (bf16
    where the CPU has bf16 units), "fp32" or "bf16"; ``precision`` in the result says which ran.
    """
    params = dict(preset=preset, batch=batch, size=tuple(size), frames=frames, repeats=repeats,
                  device=device, attention=attention, precision=precision)
    return _in_subprocess("infer", params) if isolate else _inference_in_process(**params)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vilocal_dist.bench.model",
        description="Benchmark a ViLocal preset: one stage-1 training step and clip inference, "
        "each in a fresh subprocess (peak memory of that measurement only).",
    )
    parser.add_argument("--preset", default="vilocal", help="model preset (see list_models())")
    parser.add_argument("--batch", type=int, default=2, help="training batch size")
    parser.add_argument("--infer-batch", type=int, default=1, help="inference batch size")
    parser.add_argument("--size", type=int, nargs=2, default=(240, 432), metavar=("H", "W"))
    parser.add_argument("--frames", type=int, default=5, help="frames per clip")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference calls")
    parser.add_argument("--checkpoint", choices=CHECKPOINT_MODES, default="auto",
                        help="activation checkpointing for the training step (auto: only what "
                        "--budget-gib needs)")
    parser.add_argument("--budget-gib", type=float, default=DEFAULT_BUDGET_GIB,
                        help="memory budget for --checkpoint auto")
    parser.add_argument("--attention", choices=("fast", "authors"), default="fast",
                        help="attention as this project computes it or the authors' explicit form")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="CPU inference attention precision (auto: bf16 on CPUs with bf16 units)")
    parser.add_argument("--mode", choices=("train", "infer", "both"), default="both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, params = json.loads(args.worker)
        if "size" in params:
            params["size"] = tuple(params["size"])
        result = _WORKERS[kind](**params)
        print(json.dumps({**result, "vmhwm_mib": round(peak_rss_mib(), 1)}))
        return 0

    results: dict[str, Any] = {}
    if args.mode in ("train", "both"):
        results["train"] = train_step_benchmark(
            args.preset, args.batch, tuple(args.size), frames=args.frames, steps=args.steps,
            checkpoint=args.checkpoint, device=args.device, warmup=args.warmup,
            attention=args.attention, budget_gib=args.budget_gib,
        )
    if args.mode in ("infer", "both"):
        results["infer"] = inference_benchmark(
            args.preset, args.infer_batch, tuple(args.size), frames=args.frames,
            repeats=args.repeats, device=args.device, attention=args.attention,
            precision=args.precision,
        )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, res in results.items():
            print(name + ": " + ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
