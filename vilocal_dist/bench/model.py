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

from vilocal_dist.losses.contrastive import pixel_contrastive_loss
from vilocal_dist.models import autocast_context, count_parameters, create_model

CHECKPOINT_MODES = ("none", "attention", "all")


def _checkpoint_overrides(mode: str) -> dict[str, bool]:
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_MODES}, got {mode!r}")
    return {"checkpoint_attention": mode == "attention", "checkpoint_all": mode == "all"}


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
    device: str, warmup: int,
) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    dev = torch.device(device)
    model = create_model(preset, **_checkpoint_overrides(checkpoint)).to(dev).train()
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

    for _ in range(warmup):  # first-call allocations and kernel selection are not what we time
        step()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "mode": "train", "preset": preset, "batch": batch, "frames": frames, "size": list(size),
        "checkpoint": checkpoint, "warmup": warmup, "steps": steps, "step_s": wall / steps,
        "cpu_s": cpu / steps, "loss": loss, "encoder_params": count_parameters(encoder),
        "baseline_rss_mb": baseline, **_peak_mb(dev), **_context(dev),
        "load_avg_1m_start": load_start,
    }


def _inference_in_process(
    preset: str, batch: int, size: tuple[int, int], frames: int, repeats: int, device: str
) -> dict[str, Any]:
    load_start = os.getloadavg()[0]
    dev = torch.device(device)
    model = create_model(preset).to(dev).eval()
    clip = _clip(batch, frames, size, dev)
    baseline = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode(), autocast_context(dev):
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
        "repeats": repeats, "clips_per_s": clips / wall, "s_per_clip": wall / clips,
        "cpu_s_per_clip": cpu / clips, "baseline_rss_mb": baseline, **_peak_mb(dev),
        **_context(dev), "load_avg_1m_start": load_start,
    }


_WORKERS = {"train": _train_step_in_process, "infer": _inference_in_process}


def _in_subprocess(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "vilocal_dist.bench.model", "--worker", json.dumps([kind, params])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_step_benchmark(
    preset: str = "vilocal", batch: int = 2, size: tuple[int, int] = (240, 432), *,
    frames: int = 5, steps: int = 2, checkpoint: str = "all", device: str = "cpu",
    warmup: int = 1, isolate: bool = True,
) -> dict[str, Any]:
    """Time a stage-1 step (encoder forward, contrastive loss, backward, AdamW) after ``warmup``
    untimed steps (0 is fine when one step takes minutes: the first-step overhead is then small).

    Returns ``step_s`` (wall seconds per step), ``cpu_s`` and ``peak_rss_mb`` (CPU) or
    ``cuda_peak_mb`` (CUDA). ``checkpoint``: "none", "attention" (SABlocks) or "all" blocks.
    ``isolate`` runs it in a fresh subprocess so the peak belongs to this measurement only.
    """
    _checkpoint_overrides(checkpoint)
    params = dict(preset=preset, batch=batch, size=tuple(size), frames=frames, steps=steps,
                  checkpoint=checkpoint, device=device, warmup=warmup)
    return _in_subprocess("train", params) if isolate else _train_step_in_process(**params)


def inference_benchmark(
    preset: str = "vilocal", batch: int = 1, size: tuple[int, int] = (240, 432), *,
    frames: int = 5, repeats: int = 3, device: str = "cpu", isolate: bool = True,
) -> dict[str, Any]:
    """Time ``model(clip)`` + sigmoid under ``torch.inference_mode`` after one warm-up.

    Returns ``clips_per_s``, ``s_per_clip``, ``cpu_s_per_clip`` and the peak memory as above.
    """
    params = dict(preset=preset, batch=batch, size=tuple(size), frames=frames, repeats=repeats,
                  device=device)
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
    parser.add_argument("--checkpoint", choices=CHECKPOINT_MODES, default="all",
                        help="activation checkpointing for the training step")
    parser.add_argument("--mode", choices=("train", "infer", "both"), default="both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, params = json.loads(args.worker)
        params["size"] = tuple(params["size"])
        print(json.dumps(_WORKERS[kind](**params)))
        return 0

    results: dict[str, Any] = {}
    if args.mode in ("train", "both"):
        results["train"] = train_step_benchmark(
            args.preset, args.batch, tuple(args.size), frames=args.frames, steps=args.steps,
            checkpoint=args.checkpoint, device=args.device, warmup=args.warmup,
        )
    if args.mode in ("infer", "both"):
        results["infer"] = inference_benchmark(
            args.preset, args.infer_batch, tuple(args.size), frames=args.frames,
            repeats=args.repeats, device=args.device,
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
