"""Forge videos: remove the masked objects of a source video by inpainting, store the result.

``forge_video`` is the unit of work (one source × one method) that the tests, the demo and the
Ray Tune fan-out all call; ``forge_local`` loops over sources × methods in one process. The
stored mask of a forged video is the source's object mask, i.e. exactly the region the method
was asked to fill (``composite`` keeps every other pixel untouched).

A record also keeps the method's wall time and, for internal methods, its learning curve (thinned
to ``CURVE_POINTS``). Where the source has clean backgrounds (composed videos, the quality
protocol's folders) the curve includes the hole PSNR against them at every evaluation.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from tqdm import tqdm

from vilocal_dist.data.composed import ComposedVideo
from vilocal_dist import storage
from vilocal_dist.data.manifest import ForgedDataset, publish, split_for, store_video, stored_record, video_id
from vilocal_dist.data.sources import VideoSource, load_video, open_source
from vilocal_dist.errors import InputError
from vilocal_dist.inpaint.registry import get_method
from vilocal_dist.inpaint.stopping import watch
from vilocal_dist.video.io import resize_frame, resize_mask

Source = str | Path | VideoSource | ComposedVideo


def source_name(source: Source) -> str:
    """The name a source's forged videos are filed under (manifest ``source_video``)."""
    return source.name if isinstance(source, (ComposedVideo, VideoSource)) else open_source(source).name


def _load(
    source: Source, size: tuple[int, int] | None, max_frames: int | None
) -> tuple[np.ndarray, np.ndarray, str, ComposedVideo | VideoSource]:
    """(frames uint8 T×H×W×3, masks bool T×H×W, spec string, the opened source) of any source."""
    if isinstance(source, ComposedVideo):
        frames, masks = source.frames[:max_frames], source.masks[:max_frames]
        if size is not None:
            frames = np.stack([resize_frame(f, size) for f in frames])
            masks = np.stack([resize_mask(m, size) for m in masks])
        spec = f"composed:{'-'.join(str(s) for s in source.meta.get('seed', []))}"
        return frames, masks, spec, source
    src = open_source(source)
    frames, masks = load_video(src, size=size, max_frames=max_frames)
    return frames, masks, src.spec, src


#: At most this many learning-curve points per record (a manifest of thousands of videos stays small).
CURVE_POINTS = 64


def thin_curve(points: list[dict[str, float]], keep: int = CURVE_POINTS) -> list[dict[str, float]]:
    """At most ``keep`` evenly spaced points of ``points``, always with the first and the last."""
    if len(points) <= keep:
        return list(points)
    picks = sorted({round(i * (len(points) - 1) / (keep - 1)) for i in range(keep)})
    return [points[i] for i in picks]


def _truth(src: ComposedVideo | VideoSource, size: tuple[int, int] | None, frames: int) -> np.ndarray | None:
    """The opened source's clean backgrounds (uint8 T×H×W×3 at the working size), or None."""
    if isinstance(src, ComposedVideo):
        bgs = src.backgrounds[:frames]
        return np.stack([resize_frame(f, size) for f in bgs]) if size is not None else bgs
    if not src.has_backgrounds:
        return None
    out = []
    for frame in src.iter_backgrounds(size):
        out.append(frame)
        if len(out) == frames:
            break
    return np.stack(out) if len(out) == frames else None


def forge_video(
    source: Source,
    method: str,
    out_root: str | Path,
    *,
    cfg: Mapping[str, Any] | None = None,
    seed: int = 0,
    split: str,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
    progress: bool = False,
    publish_record: bool = True,
) -> dict[str, Any]:
    """Inpaint ``source``'s masked objects with ``method`` and add the video to the dataset at
    ``out_root`` (a folder or storage URI); returns its manifest record. A video already complete
    there (listed, or stored by an attempt whose record was never published) is not redone.
    ``publish_record=False`` stores the video only: the caller publishes the record (the forge
    driver does, for its trials)."""
    dataset = ForgedDataset(out_root)
    name = source_name(source)
    vid = video_id(name, method)
    # A forged video is listed only once stored, so its stored record alone says "complete"
    # (reading the whole manifest here would make every video of a large forge cost O(N)).
    stored = stored_record(out_root, vid)
    if stored is not None:
        return publish(out_root, [stored])[0] if publish_record else stored
    inpaint = get_method(method)  # unknown names fail before any decoding
    frames, masks, spec, opened = _load(source, size, max_frames)
    if not masks.any():
        raise InputError("the source's masks are empty: there is nothing to remove", spec)
    # Checkpoints of long methods live here, so a retried trial resumes instead of restarting.
    workdir = _workdir(dataset, vid)
    started = time.perf_counter()
    with watch(gt_frames=_truth(opened, size, len(frames))):
        result = inpaint(frames, masks, dict(cfg or {}), seed=seed, progress=progress, workdir=workdir)
    seconds = time.perf_counter() - started
    record = {
        "source_video": name,
        "source": spec,
        "method": method,
        "split": split,
        "config": result.config,
        "seed": seed,
        "metrics": result.metrics,
        "size": list(frames.shape[1:3]),
        "max_frames": max_frames,
        "seconds": round(seconds, 3),  # wall time of the method (a resumed fit: since the resume)
    }
    if result.history:
        record["history"] = thin_curve(result.history)
    stored = store_video(out_root, record, result.frames, masks)
    published = publish(out_root, [stored])[0] if publish_record else stored
    shutil.rmtree(workdir, ignore_errors=True)  # the video is in the dataset: its checkpoints are dead weight
    return published


def _workdir(dataset: ForgedDataset, vid: str) -> Path:
    """Where a method checkpoints: beside a local dataset (shared by a retry on any node of an
    NFS root), in node-local scratch for an object store (a retry elsewhere starts over)."""
    if not dataset.remote:
        return Path(dataset.root) / ".work" / vid
    key = hashlib.sha1(dataset.uri.encode()).hexdigest()[:12]
    return storage.scratch_dir() / "work" / key / vid


def forge_local(
    out_root: str | Path,
    sources: Iterable[Source],
    methods: Iterable[str],
    *,
    cfgs: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    splits: Mapping[str, str] | None = None,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Forge every source with every method, one after another (no Ray).

    A source's split comes from ``splits[name]`` when given, else from a hash of its name
    (``data.manifest.split_for``), so all forgeries of one scene share a split.
    """
    sources, methods = list(sources), list(methods)
    records = []
    jobs = [(s, m) for s in sources for m in methods]
    for source, method in tqdm(jobs, desc="forge", unit="video", disable=not progress):
        name = source_name(source)
        split = (splits or {}).get(name) or split_for(name, test_fraction, seed)
        records.append(forge_video(source, method, out_root, cfg=(cfgs or {}).get(method), seed=seed,
                                   split=split, size=size, max_frames=max_frames))
    return records
