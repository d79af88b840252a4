"""Data layer: video sources (DAVIS layout, files + masks, built-in composed videos), the
forged-dataset manifest and the clip dataset. No models, Ray or MLflow.

``ClipDataset`` and ``frame_windows`` are loaded lazily: they need torch, which the CLI's
``data inspect`` does not.
"""

from __future__ import annotations

from typing import Any

from vilocal_dist.data.composed import ComposedVideo, compose_video, write_composed_dataset
from vilocal_dist.data.manifest import (
    ForgedDataset,
    package_versions,
    publish,
    split_for,
    store_video,
    stored_record,
    video_id,
    write_forged_video,
)
from vilocal_dist.data.sources import ArraySource, PathSource, VideoSource, list_sequences, load_video, open_source

_LAZY = {"ClipDataset", "frame_windows", "reflect_index"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from vilocal_dist.data import clips

        return getattr(clips, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArraySource",
    "ClipDataset",
    "ComposedVideo",
    "ForgedDataset",
    "PathSource",
    "VideoSource",
    "compose_video",
    "frame_windows",
    "list_sequences",
    "load_video",
    "open_source",
    "package_versions",
    "publish",
    "reflect_index",
    "split_for",
    "store_video",
    "stored_record",
    "video_id",
    "write_composed_dataset",
    "write_forged_video",
]
