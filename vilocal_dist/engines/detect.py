"""Localize inpainted regions in any video, streaming: memory does not grow with its length.

A 5-frame window slides over the decoded frames (at most clip_len + 1 frames are held; edges are
reflected exactly like the training clips, frame -1 -> 1 and T -> T-2). The window is resized to
the model's training size; the middle frame's probability map is upsampled back to the video's
own size. Outputs, in DIR:

    probs/00000.png …  8-bit gray, value = round(255 · p)   (lossless)
    masks/00000.png …  0/255, p > threshold
    overlay.mp4        H.264; detected pixels tinted red
    report.json        per-frame forged fraction and p99, video score, model, threshold, input hash

Everything is written under DIR/.tmp and moved into place at the end; report.json comes last
(and an old one is removed first), so its presence means the folder is complete.

Video score: the mean over frames of each frame's 99th-percentile probability. The top
percentile responds to a forged region covering ≥1 % of the frame, and averaging over frames
keeps one noisy frame from deciding the score (the max is reported too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

from vilocal_dist import __version__, storage
from vilocal_dist.device import pick_device
from vilocal_dist.data.clips import reflect_index
from vilocal_dist.data.sources import PathSource, open_source
from vilocal_dist.engines.evaluate import cached, load_detector, model_reference, predict_probs
from vilocal_dist.engines.overlay import red_overlay
from vilocal_dist.errors import ConfigError
from vilocal_dist.video.io import list_image_files, replace_dir, resize_frame, write_video

log = logging.getLogger(__name__)

CLIP_LEN = 5
VIDEO_SCORE = "mean over frames of the per-frame 99th-percentile probability"


def sliding_windows(frames: Iterable[Any], clip_len: int = CLIP_LEN) -> Iterator[tuple[int, list[Any]]]:
    """Yield ``(t, [item at t-2 … t+2])`` for every item of a stream, reflecting at both ends.

    Holds at most ``clip_len + 1`` items; the stream's length is learnt when it ends.
    """
    half = clip_len // 2
    stream = iter(frames)
    held: dict[int, Any] = {}
    num_read, total = 0, None  # total stays None until the stream is exhausted
    t = 0
    while True:
        while total is None and num_read <= t + half:  # read ahead to t + half
            try:
                held[num_read] = next(stream)
                num_read += 1
            except StopIteration:
                total = num_read
        if total is not None and t >= total:
            return
        # Before the end is known only the start can need reflecting (-k -> k).
        index = [reflect_index(t + k, total) if total is not None else abs(t + k) for k in range(-half, half + 1)]
        yield t, [held[i] for i in index]
        held.pop(t - half, None)  # never needed again: later windows start at t + 1 - half
        t += 1


def in_background(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """Iterate ``items`` in a worker thread, at most ``depth`` items ahead of the consumer.

    The stages of detection (decode, model, PNG and video writing) spend their time in C code that
    releases the GIL, so each stage in its own thread keeps the others busy; the bounded queue keeps
    memory flat in the video's length. An error in the worker is raised in the consumer; a consumer
    that stops early (an error downstream) stops the worker.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((None, item)):
                    return
            put((None, done))
        except BaseException as exc:  # handed to the consumer, raised there
            put((exc, None))

    thread = threading.Thread(target=work, name="detect-stage", daemon=True)
    thread.start()
    try:
        while True:
            error, item = q.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a video file, or of a frame folder's images (names and bytes, sorted); None if neither."""
    path = Path(path)
    digest = hashlib.sha256()
    files = list_image_files(path) if path.is_dir() else [path] if path.is_file() else []
    if not files:
        return None
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def detect_video(
    video: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    threshold: float = 0.5,
    size: tuple[int, int] | None = None,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write probability maps, masks, overlay video and report.json for ``video``; returns the report.

    ``video``, ``checkpoint`` and ``out_dir`` may be storage URIs: inputs are read through the
    node-local cache; a remote ``out_dir`` is written in scratch and uploaded, report.json last."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    if storage.is_remote(out_dir):
        with tempfile.TemporaryDirectory(dir=storage.scratch_dir()) as local:
            report = detect_video(video, checkpoint, local, threshold=threshold, size=size,
                                  batch_size=batch_size, device=device, progress=progress)
            storage.upload_folder(local, out_dir, last=("report.json",))
        return report
    device = pick_device(str(device or "auto"))
    ckpt, model, size = load_detector(cached(checkpoint), device, size)
    model.eval()
    train_cfg = ckpt["train_config"]
    source = open_source(cached(video) if storage.is_remote(video) else video)
    if source.num_frames < CLIP_LEN:
        # Defined, not an error: the reflected window repeats frames (1 frame: five copies of it).
        log.warning("%s has %d frames, fewer than one %d-frame clip: windows repeat frames (reflected)",
                    source.spec, source.num_frames, CLIP_LEN)
    # Hash what is actually decoded (a forged/DAVIS folder's frame folder, a video file).
    input_hash = file_sha256(source.frames_path) if isinstance(source, PathSource) else None

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # from here on the folder is not complete
    tmp = out / ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "probs").mkdir(parents=True)
    (tmp / "masks").mkdir()
    per_frame: list[dict[str, float]] = []

    def batches() -> Iterator[list[tuple[int, list[tuple[np.ndarray, np.ndarray]]]]]:
        frames = ((f, resize_frame(f, size)) for f in source.iter_frames())  # (native, model size)
        batch = []
        for item in sliding_windows(frames):
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def predictions() -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
        """``(t, native frame, probability map at model size)`` per frame, batch by batch."""
        for batch in in_background(batches(), depth=2):  # decoding and resizing in their own thread
            clips = np.stack([np.stack([small for _, small in window]) for _, window in batch])  # B×T×h×w×3
            clip = rearrange(torch.from_numpy(clips), "b t h w c -> b c t h w").float().div(255).to(device)
            probs = predict_probs(model, clip)
            for (t, window), prob in zip(batch, probs):
                yield t, window[CLIP_LEN // 2][0], prob

    def overlay_frames() -> Iterator[np.ndarray]:
        """Write maps and masks; yield overlay frames for the encoder. The model runs one stage ahead."""
        for t, native, prob in in_background(predictions(), depth=2 * batch_size):
            prob = F.interpolate(prob[None], size=native.shape[:2], mode="bilinear", align_corners=False)[0, 0]
            prob = prob.clamp(0, 1).cpu().numpy()
            mask = prob > threshold
            _write_png(tmp / "probs" / f"{t:05d}.png", np.round(prob * 255).astype(np.uint8))
            _write_png(tmp / "masks" / f"{t:05d}.png", mask.astype(np.uint8) * 255)
            per_frame.append({"frame": t, "forged_fraction": float(mask.mean()), "p99": float(np.quantile(prob, 0.99))})
            yield red_overlay(native, mask)

    fps = source.info.fps if isinstance(source, PathSource) and source.info.fps else 25
    frames_iter = tqdm(overlay_frames(), total=source.num_frames, desc="detect", unit="frame", disable=not progress)
    try:
        write_video(tmp / "overlay.mp4", frames_iter, codec="libx264", crf=18, fps=max(1, round(fps)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. a frame that fails to decode midway: no half outputs
        raise

    for name in ("probs", "masks"):
        replace_dir(tmp / name, out / name)
    os.replace(tmp / "overlay.mp4", out / "overlay.mp4")
    shutil.rmtree(tmp, ignore_errors=True)

    p99 = np.array([f["p99"] for f in per_frame])
    report = {
        "input": str(video),
        "input_sha256": input_hash,
        "frames": len(per_frame),
        "height": source.height,
        "width": source.width,
        "model": model_reference(checkpoint),
        "model_name": ckpt["model_name"],
        "model_config": ckpt["model_config"],
        "train_config": train_cfg,
        "model_epoch": ckpt["epoch"],
        "model_size": list(size),
        "threshold": threshold,
        "video_score": float(p99.mean()),
        "video_score_max": float(p99.max()),
        "video_score_definition": VIDEO_SCORE,
        "prob_encoding": "probs/*.png: 8-bit gray, value = round(255 * probability), at the video's size",
        "per_frame": per_frame,
        "outputs": {"probs": "probs", "masks": "masks", "overlay": "overlay.mp4"},
        "version": __version__,
    }
    storage.atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
