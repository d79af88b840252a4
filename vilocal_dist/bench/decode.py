"""Decode benchmark: frames/s of streaming a 480p H.264 file, and peak memory while streaming.

Run: ``python -m vilocal_dist.bench.decode [--video FILE] [--frames 300] [--json]``.
Without ``--video`` it first encodes a test file (libx264, CRF 23, 854×480): the shared DAVIS
sequence played back and forth up to ``--frames`` frames, or composed videos when DAVIS is absent.
Peak memory is the maximum RSS of a fresh child process that only streams the file, so encoding
and this process's own allocations do not count.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SIZE = (480, 854)


def _test_frames(num_frames: int, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """DAVIS bmx-trees ping-ponged (real footage) or, without it, composed videos."""
    from vilocal_dist.paths import davis_root
    from vilocal_dist.video.io import iter_frames, resize_frame

    seq = davis_root() / "JPEGImages" / "480p" / "bmx-trees"
    if seq.is_dir():
        frames = [resize_frame(f, size) for f in iter_frames(seq)]
        order = frames + frames[-2:0:-1]
        yield from itertools.islice(itertools.cycle(order), num_frames)
        return
    from vilocal_dist.data.composed import compose_video

    done = 0
    for chunk in itertools.count():
        video = compose_video((7, chunk), min(50, num_frames - done), size)
        yield from video.frames
        done += len(video.frames)
        if done >= num_frames:
            return


def make_test_video(path: Path, num_frames: int = 300, size: tuple[int, int] = SIZE, crf: int = 23) -> Path:
    """Encode the benchmark input: ``num_frames`` frames of H×W=``size``, libx264 at ``crf``."""
    from vilocal_dist.video.io import write_video

    return write_video(path, _test_frames(num_frames, size), codec="libx264", crf=crf)


def _stream_child(path: str) -> dict:
    """Runs in a fresh process: stream every frame, report baseline and peak RSS (MiB; VmHWM,
    because ru_maxrss survives exec and would report the larger parent that spawned us)."""
    import psutil

    from vilocal_dist.bench.detect import peak_rss_mib
    from vilocal_dist.video.io import iter_frames

    baseline = psutil.Process().memory_info().rss / 2**20
    count = sum(1 for _ in iter_frames(path))
    return {"frames": count, "baseline_rss_mib": round(baseline, 1), "peak_rss_mib": round(peak_rss_mib(), 1)}


def decode_benchmark(video: str | Path | None = None, *, frames: int = 300, repeats: int = 2) -> dict:
    """Decode throughput (best of ``repeats`` passes) and streaming peak RSS for ``video``.

    Without ``video`` a 480p H.264 test file of ``frames`` frames is made in a temp folder.
    Returns frames, height, width, codec, decode_fps, peak/baseline RSS (MiB) of a streaming-only
    process, and the MiB the whole video would take decoded in memory, for comparison.
    """
    from vilocal_dist.video.io import iter_frames, probe

    label = str(video)
    with tempfile.TemporaryDirectory(prefix="vilocal-bench-") as tmp:
        if video is None:
            video = make_test_video(Path(tmp) / "bench_480p_h264.mp4", frames)
            label = f"generated {frames} frames {SIZE[1]}x{SIZE[0]} libx264 crf 23 (deleted after the run)"
        info = probe(video)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            count = sum(1 for _ in iter_frames(video))
            best = min(best, time.perf_counter() - start)
        child = subprocess.run(
            [sys.executable, "-m", "vilocal_dist.bench.decode", "--stream-child", str(video)],
            check=True,
            capture_output=True,
            text=True,
        )
        memory = json.loads(child.stdout.strip().splitlines()[-1])
    return {
        "video": label,
        "frames": count,
        "height": info.height,
        "width": info.width,
        "codec": info.codec,
        "decode_fps": round(count / best, 1),
        "decode_seconds": round(best, 3),
        **memory,
        "streaming_overhead_mib": round(memory["peak_rss_mib"] - memory["baseline_rss_mib"], 1),
        "whole_video_decoded_mib": round(count * info.height * info.width * 3 / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vilocal_dist.bench.decode", description=__doc__.split("\n")[0])
    parser.add_argument("--video", help="video to decode (default: make a 480p H.264 test file)")
    parser.add_argument("--frames", type=int, default=300, help="frames in the generated test file")
    parser.add_argument("--repeats", type=int, default=2, help="timed decode passes (best is reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--stream-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stream_child:
        print(json.dumps(_stream_child(args.stream_child)))
        return 0
    result = decode_benchmark(args.video, frames=args.frames, repeats=args.repeats)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:<24} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
