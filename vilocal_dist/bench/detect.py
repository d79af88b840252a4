"""Detection benchmark: frames/s and peak memory of ``detect_video`` against video length.

    python -m vilocal_dist.bench.detect --lengths 30 300 --preset vilocal_small --json

The detector is an untrained ViLocal preset saved as a stage-2 checkpoint (speed and memory do
not depend on the weights). Test videos are composed videos encoded with x264. Each length runs
``engines.detect.detect_video`` (decode, 5-frame windows, model, probability/mask PNGs, overlay
video, report) in a fresh subprocess, so its peak memory is that run's alone: the process's
VmHWM (not ``ru_maxrss``, which a child inherits from its parent across exec) and, on CUDA,
``torch.cuda.max_memory_allocated``. Streaming detection should need the same memory for 300
frames as for 30: ``peak_growth_mib`` is the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from vilocal_dist.config import size_arg


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB): VmHWM on Linux, ru_maxrss elsewhere."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def make_checkpoint(folder: Path, preset: str, size: tuple[int, int]) -> Path:
    """An untrained ``preset`` saved as a stage-2 checkpoint whose training size is ``size``."""
    from vilocal_dist.engines.checkpoint import checkpoint_dict, save_checkpoint
    from vilocal_dist.engines.config import TrainConfig
    from vilocal_dist.models import create_model

    cfg = TrainConfig(model=preset, size_h=size[0], size_w=size[1])
    ckpt = checkpoint_dict(create_model(preset), model_name=preset, stage=2, epoch=0, samples_seen=0,
                           train_config=cfg.to_dict(), metrics={})
    return save_checkpoint(ckpt, folder)


def make_video(path: Path, frames: int, size: tuple[int, int], seed: int = 0) -> Path:
    """A composed test video of ``frames`` frames at ``size``, x264 CRF 18."""
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.video.io import write_video

    return write_video(path, compose_video(seed, frames, size).frames, codec="libx264", crf=18)


def _child(video: str, checkpoint: str, device: str, batch_size: int) -> dict[str, Any]:
    """Runs in a fresh process: one detect_video call, timed, with its peak memory."""
    import torch

    from vilocal_dist.engines.detect import detect_video

    baseline = current_rss_mib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as out:
        start = time.perf_counter()
        report = detect_video(video, checkpoint, out, batch_size=batch_size, device=device, progress=False)
        seconds = time.perf_counter() - start
    result = {"frames": report["frames"], "seconds": round(seconds, 3), "fps": round(report["frames"] / seconds, 2),
              "baseline_rss_mib": round(baseline, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
              "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        result["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def detect_benchmark(
    lengths: Sequence[int] = (30, 300), *, preset: str = "vilocal_small", size: tuple[int, int] = (240, 432),
    video_size: tuple[int, int] | None = None, device: str = "cpu", batch_size: int = 4,
) -> dict[str, Any]:
    """Detection speed and peak memory for videos of each length (one fresh subprocess each).

    ``size``: the model's input size; ``video_size``: the test videos' (default the same).
    """
    video_size = tuple(video_size or size)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        checkpoint = make_checkpoint(Path(tmp) / "model", preset, tuple(size))
        for length in lengths:
            video = make_video(Path(tmp) / f"video_{length}.mp4", length, video_size)
            args = json.dumps([str(video), str(checkpoint), device, batch_size])
            proc = subprocess.run([sys.executable, "-m", "vilocal_dist.bench.detect", "--child", args],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"detect benchmark child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    peaks = [r["peak_rss_mib"] for r in runs]
    return {
        "preset": preset, "model_size": list(size), "video_size": list(video_size), "device": device,
        "batch_size": batch_size, "weights": "untrained (random init)", "runs": runs,
        "peak_growth_mib": round(peaks[-1] - peaks[0], 1),
        "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vilocal_dist.bench.detect", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[30, 300], help="video lengths in frames (default 30 300)")
    p.add_argument("--preset", default="vilocal_small", help="untrained model preset (default vilocal_small)")
    p.add_argument("--size", type=size_arg(), default=(240, 432), help="model input HxW (default 240x432)")
    p.add_argument("--video-size", type=size_arg(), default=None, help="test video HxW (default: --size)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*json.loads(args.child))))
        return 0
    result = detect_benchmark(args.lengths, preset=args.preset, size=args.size, video_size=args.video_size,
                              device=args.device, batch_size=args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        for run in result["runs"]:
            print(f"{run['frames']:>5} frames: {run['fps']:.1f} frames/s, peak RSS {run['peak_rss_mib']:.0f} MiB"
                  + (f", CUDA peak {run['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in run else ""))
        print(f"peak growth {result['peak_growth_mib']} MiB ({result['preset']} at {args.size[0]}x{args.size[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
