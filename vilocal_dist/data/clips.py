"""Clip dataset for ViLocal: a 5-frame window around every frame, labelled by the middle mask.

Every frame of every video is the middle of one window, so the detector predicts every frame.
At the video ends the window indices are *reflected* (frame -1 -> 1, frame T -> T-2): the clip
keeps real neighbouring content and its length, instead of repeating the edge frame.

Frames are resized bilinearly (masks nearest) to 240×432 by default, and each video is decoded
and resized once per dataset (per DataLoader worker), then kept in memory as uint8. A fixed
fraction of clips (default ¼, chosen by a hash of seed, video and frame, so the same clips every
epoch and every run) is passed through H.264 at CRF 23 in memory, as in the paper.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from vilocal_dist.data.sources import ArraySource, VideoSource, open_source
from vilocal_dist.errors import InputError
from vilocal_dist.video.io import encode_roundtrip, iter_masks, resize_mask

log = logging.getLogger(__name__)


def reflect_index(index: int, num_frames: int) -> int:
    """Mirror ``index`` into [0, num_frames) without repeating the edge (…2 1 [0 1 2 … T-1] T-2…)."""
    if num_frames == 1:
        return 0
    period = 2 * (num_frames - 1)
    index %= period
    return index if index < num_frames else period - index


def frame_windows(num_frames: int, clip_len: int = 5) -> list[list[int]]:
    """One window of ``clip_len`` frame indices centred on each frame (reflected at the ends)."""
    if clip_len < 1 or clip_len % 2 == 0:
        raise ValueError(f"clip_len must be odd (it has a middle frame), got {clip_len}")
    half = clip_len // 2
    return [[reflect_index(t + k, num_frames) for k in range(-half, half + 1)] for t in range(num_frames)]


@dataclass
class _Video:
    source: VideoSource
    masks: Any  # None (use the source's), a path, or a bool T×H×W array
    name: str
    method: str
    num_frames: int


class ClipDataset(Dataset):
    """Items: dict(clip float32 [3,T,H,W] in [0,1], mask float32 [1,H,W] (middle frame),
    video str, frame int, method str, compressed bool).

    ``videos``: (frames, masks, meta) triples. ``frames`` is anything
    :func:`~vilocal_dist.data.sources.open_source` accepts (a forged video folder, a DAVIS
    sequence folder, a video file, a VideoSource, a uint8 T×H×W×3 array); ``masks`` is None (the
    source's own masks), a mask folder/video, or a bool T×H×W array; ``meta`` may give ``video``
    (name) and ``method``.
    """

    def __init__(
        self,
        videos: Sequence[tuple[Any, Any, dict[str, Any]]],
        size: tuple[int, int] = (240, 432),
        clip_len: int = 5,
        compress_fraction: float = 0.25,
        crf: int = 23,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= compress_fraction <= 1.0:
            raise ValueError(f"compress_fraction must be in [0, 1], got {compress_fraction}")
        self.size, self.clip_len, self.crf, self.seed = tuple(size), clip_len, crf, seed
        self.compress_fraction = compress_fraction
        self.videos: list[_Video] = []
        for frames, masks, meta in videos:
            if isinstance(frames, np.ndarray):
                source = ArraySource(str(meta.get("video", f"video{len(self.videos)}")), frames)
            else:
                source = open_source(frames)
            name = str(meta.get("video") or meta.get("name") or source.name)
            self.videos.append(_Video(source, masks, name, str(meta.get("method", "unknown")), source.num_frames))
        short = [v.name for v in self.videos if v.num_frames < clip_len]
        if short:
            # Defined, not an error (every frame still gets a window), but such clips hold repeated frames.
            log.warning("%d video(s) shorter than a %d-frame clip (%s): their windows repeat frames (reflected)",
                        len(short), clip_len, ", ".join(short[:5]) + (", …" if len(short) > 5 else ""))
        self.index = [(v, t) for v, video in enumerate(self.videos) for t in range(video.num_frames)]
        self._windows = {video.num_frames: frame_windows(video.num_frames, clip_len) for video in self.videos}
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_manifest(
        cls, root: str | Path, split: str | None = None, methods: Sequence[str] | None = None, **kwargs: Any
    ) -> ClipDataset:
        """All complete videos of a forged dataset (optionally one split / some methods)."""
        from vilocal_dist.data.manifest import ForgedDataset

        dataset = ForgedDataset(root)
        records = dataset.records(split=split, methods=methods)
        videos = [(*dataset.video_paths(r), {"video": r["id"], "method": r["method"]}) for r in records]
        return cls(videos, **kwargs)

    def __len__(self) -> int:
        return len(self.index)

    def is_compressed(self, video: str, frame: int) -> bool:
        """Whether the clip centred on ``frame`` of ``video`` gets the H.264 pass (stable hash)."""
        if self.compress_fraction <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}:{video}:{frame}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.compress_fraction

    def load(self, video_index: int) -> tuple[np.ndarray, np.ndarray]:
        """The resized frames (uint8 T×H×W×3) and masks (bool T×H×W) of one video, cached."""
        if video_index not in self._cache:
            video = self.videos[video_index]
            frames = np.stack(list(video.source.iter_frames(self.size)))
            if video.masks is None:
                masks = np.stack(list(video.source.iter_masks(self.size)))
            elif isinstance(video.masks, np.ndarray):
                masks = np.stack([resize_mask(m.astype(bool), self.size) for m in video.masks])
            else:
                masks = np.stack(list(iter_masks(video.masks, self.size)))
            if len(masks) != len(frames):
                where = video.masks if isinstance(video.masks, (str, Path)) else video.source.spec
                raise InputError(f"{len(masks)} masks for {len(frames)} frames (need one mask per frame)", where)
            self._cache[video_index] = (frames, masks)
        return self._cache[video_index]

    def preload(self) -> None:
        """Decode every video now (e.g. before forking DataLoader workers, which then share it)."""
        for video_index in range(len(self.videos)):
            self.load(video_index)

    def __getitem__(self, item: int) -> dict[str, Any]:
        video_index, frame = self.index[item]
        video = self.videos[video_index]
        frames, masks = self.load(video_index)
        clip = frames[self._windows[video.num_frames][frame]]  # T×H×W×3 uint8
        compressed = self.is_compressed(video.name, frame)
        if compressed:
            clip = encode_roundtrip(clip, "libx264", self.crf)
        return {
            "clip": rearrange(torch.from_numpy(np.ascontiguousarray(clip)), "t h w c -> c t h w").float() / 255.0,
            "mask": torch.from_numpy(masks[frame]).float()[None],
            "video": video.name,
            "frame": frame,
            "method": video.method,
            "compressed": compressed,
        }


__all__ = ["ClipDataset", "frame_windows", "reflect_index"]
