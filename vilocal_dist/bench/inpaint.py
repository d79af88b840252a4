"""IIVI training benchmark: iterations/s and peak memory per preset, with and without regularisers.

    python -m vilocal_dist.bench.inpaint --json            # paper preset at 320×600, tiny at 64×96
    python -m vilocal_dist.bench.inpaint --only paper --iters 5 --batch 5 --recompute

Each configuration runs in a fresh subprocess, so its peak memory (VmHWM on CPU, the CUDA
allocator's peak on a GPU) is its own. The video is a composed one; the anti-ambiguity loss uses a
fixed-seed random VGG-19 (speed and memory do not depend on the weights). The first ``warmup``
steps are not timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from typing import Any

#: (preset, (H, W)) measured by default: the paper's working size, and the CPU/test size.
DEFAULT_CASES = (("paper", (320, 600)), ("tiny", (64, 96)))


def iivi_benchmark(
    preset: str,
    size: tuple[int, int],
    regularizers: bool,
    iters: int,
    *,
    batch: int = 5,
    frames: int = 8,
    warmup: int = 1,
    device: str = "auto",
    recompute: bool = False,
) -> dict[str, Any]:
    """Time ``iters`` IIVI training steps (after ``warmup``) in this process.

    Returns ``iters_per_s``, ``peak_mem_mb`` (CUDA: allocator peak; CPU: this process's peak RSS,
    so call it in a fresh process) and the settings measured.
    """
    import torch

    from vilocal_dist.bench.detect import peak_rss_mib
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.device import pick_device
    from vilocal_dist.inpaint.iivi.augment import dilate_masks
    from vilocal_dist.inpaint.iivi.config import IIVIConfig
    from vilocal_dist.inpaint.iivi.trainer import IIVITrainer, VideoTensors

    steps = iters + warmup
    cfg = IIVIConfig(
        preset=preset,
        iters_recon=0 if regularizers else steps,
        iters_reg=steps if regularizers else 0,
        batch=batch,
        random_vgg=True,
        device=device,
        recompute=recompute,
    )
    dev = pick_device(cfg.device)
    video = compose_video(0, frames, size)
    holes = dilate_masks(video.masks, cfg.dilate)
    trainer = IIVITrainer(VideoTensors.from_numpy(video.frames, holes, holes & False, dev), cfg, seed=0, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        trainer.step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    for _ in range(iters):
        trainer.step()
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss_mib()
    return {
        "preset": preset,
        "size": list(size),
        "regularizers": regularizers,
        "batch": batch,
        "recompute": recompute,
        "iters": iters,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "iters_per_s": round(iters / seconds, 4),
        "seconds_per_iter": round(seconds / iters, 3),
        "peak_mem_mb": round(peak, 1),
        "peak_mem_kind": "cuda_allocated" if dev.type == "cuda" else "process_rss",
    }


def run_isolated(
    preset: str, size: tuple[int, int], regularizers: bool, iters: int, *, mem_limit_mb: float, **kw: Any
) -> dict[str, Any]:
    """``iivi_benchmark`` in a fresh ``python -m`` child; returns its JSON.

    The child is killed once its RSS passes ``mem_limit_mb`` (a shared machine must not be pushed
    into the kernel's OOM killer); the result then says so instead of giving figures.
    """
    import psutil

    spec = {"preset": preset, "size": list(size), "regularizers": regularizers, "iters": iters, **kw}
    cmd = [sys.executable, "-m", "vilocal_dist.bench.inpaint", "--child", json.dumps(spec)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peak, proc = 0.0, psutil.Process(child.pid)
        while child.poll() is None:
            try:
                peak = max(peak, proc.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                break
            if peak > mem_limit_mb:
                child.kill()
                child.wait()
                return {**spec, "error": f"stopped: RSS passed the {mem_limit_mb:.0f} MiB limit"}
            time.sleep(0.1)
        if child.wait() != 0:
            err.seek(0)
            last = (err.read().strip().splitlines() or [""])[-1]
            return {**spec, "error": f"child exited with status {child.returncode}: {last}"}
        out.seek(0)
        return json.loads(out.read().strip().splitlines()[-1])


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vilocal_dist.bench.inpaint", description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default: 2 for paper, 20 for tiny)")
    parser.add_argument("--batch", type=int, default=None,
                        help="frames per step (default: the authors' 5, but 1 for the paper preset on CPU, where "
                             "one step of 5 frames at 320×600 takes minutes and ~12 GB)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--only", choices=[p for p, _ in DEFAULT_CASES], help="measure one preset only")
    parser.add_argument("--recompute", action="store_true", help="activation checkpointing in the generator")
    parser.add_argument("--mem-limit-mb", type=float, default=None,
                        help="kill a measurement whose RSS passes this (default: 70%% of available memory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        spec["size"] = tuple(spec["size"])
        print(json.dumps(iivi_benchmark(**spec)))
        return 0
    import psutil

    limit = args.mem_limit_mb or 0.7 * psutil.virtual_memory().available / 2**20
    runs = []
    for preset, size in DEFAULT_CASES:
        if args.only and preset != args.only:
            continue
        iters = args.iters or (2 if preset == "paper" else 20)
        batch = args.batch or (1 if preset == "paper" and _device(args.device) == "cpu" else 5)
        for regularizers in (False, True):
            r = run_isolated(preset, size, regularizers, iters, mem_limit_mb=limit, batch=batch,
                             device=args.device, recompute=args.recompute)
            runs.append(r)
            label = f"{preset:<6} {size[0]}x{size[1]} reg={str(regularizers):<5} batch={batch}"
            figures = r.get("error") or (
                f"{r['iters_per_s']:>8.3f} it/s {r['peak_mem_mb']:>9.1f} MiB peak ({r['device']})"
            )
            # Progress goes to stderr so that --json keeps stdout a single object.
            print(f"{label} {figures}", file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps({"runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
