"""Training / validation / test clip datasets from a forged-dataset folder.

Validation videos are held out of the manifest's ``train`` split by *source video* (every
method's forgery of one scene lands on the same side), so validation never sees a training
scene; the ``test`` split is never touched during training. Validation and test clips are not
compressed (``compress_fraction`` applies to training clips only, as in the paper).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset, Subset

from vilocal_dist.data.clips import ClipDataset
from vilocal_dist.data.manifest import ForgedDataset, split_for
from vilocal_dist.engines.config import TrainConfig
from vilocal_dist.errors import InputError

log = logging.getLogger(__name__)


def split_train_val(records: Sequence[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list, list]:
    """(train, val) records of the train split, grouped by source video.

    Sources go to validation by a seeded hash (``split_for``); if that leaves either side empty
    and there are at least two sources, the last source (by name) is held out instead. With a
    single source there is nothing to hold out: validation reuses the training videos (logged).
    """
    sources = sorted({r["source_video"] for r in records})
    val_sources = {s for s in sources if split_for(s, val_fraction, seed + 1) == "test"} if val_fraction > 0 else set()
    if len(sources) >= 2 and (not val_sources or val_sources == set(sources)):
        val_sources = {sources[-1]}
    if len(sources) < 2:
        log.warning("only %d source video(s) in the train split: validating on training videos", len(sources))
        return list(records), list(records)
    return [r for r in records if r["source_video"] not in val_sources], [r for r in records if r["source_video"] in val_sources]


def clip_dataset(root: str | Path, records: Sequence[dict[str, Any]], cfg: TrainConfig, *, train: bool) -> ClipDataset:
    """Clips of ``records`` at ``cfg.size``; H.264 on ``cfg.compress_fraction`` of them if ``train``."""
    dataset = ForgedDataset(root)
    videos = [(*dataset.video_paths(r), {"video": r["id"], "method": r["method"]}) for r in records]
    return ClipDataset(videos, size=cfg.size, compress_fraction=cfg.compress_fraction if train else 0.0,
                       crf=cfg.crf, seed=cfg.seed)


def subsample(ds: Dataset, max_items: int) -> Dataset:
    """An evenly spaced subset of at most ``max_items`` items (0 = all), the same every epoch."""
    if max_items <= 0 or len(ds) <= max_items:
        return ds
    return Subset(ds, np.linspace(0, len(ds) - 1, max_items).round().astype(int).tolist())


def training_datasets(
    root: str | Path, cfg: TrainConfig, methods: Sequence[str] | None = None
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """(train, val, summary) for a forged dataset's train split, optionally some methods only.

    ``root`` may be a storage URI: the videos are then read from a node-local cached copy."""
    dataset = ForgedDataset(root)
    records = dataset.records(split="train", methods=list(methods) if methods else None)
    if not records:
        which = f" for methods {list(methods)}" if methods else ""
        raise InputError(f"no complete videos in the train split{which} (is this a forged dataset folder?)", root)
    root = dataset.local_copy(records)
    train_records, val_records = split_train_val(records, cfg.val_fraction, cfg.seed)
    train_ds = subsample(clip_dataset(root, train_records, cfg, train=True), cfg.max_train_clips)
    val_ds = subsample(clip_dataset(root, val_records, cfg, train=False), cfg.max_val_clips)
    summary = {
        "train_videos": [r["id"] for r in train_records],
        "val_videos": [r["id"] for r in val_records],
        "train_clips": len(train_ds),
        "val_clips": len(val_ds),
        "methods": sorted({r["method"] for r in records}),
    }
    return train_ds, val_ds, summary
