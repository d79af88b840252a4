"""Clip windows (reflected at the ends) and the clip dataset (resize, cache, H.264 fraction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vilocal_dist.data import ArraySource, compose_video, write_forged_video
from vilocal_dist.data.clips import ClipDataset, frame_windows, reflect_index

SIZE = (32, 48)


def test_frame_windows_hand_computed() -> None:
    assert frame_windows(5, 5) == [[2, 1, 0, 1, 2], [1, 0, 1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 3], [2, 3, 4, 3, 2]]
    assert frame_windows(2, 5) == [[0, 1, 0, 1, 0], [1, 0, 1, 0, 1]]
    assert frame_windows(1, 5) == [[0, 0, 0, 0, 0]]
    assert frame_windows(4, 3) == [[1, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 2]]
    assert [reflect_index(i, 4) for i in range(-4, 8)] == [2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]
    with pytest.raises(ValueError, match="odd"):
        frame_windows(5, 4)


def _videos(n: int = 2, frames: int = 6) -> list:
    out = []
    for seed in range(n):
        video = compose_video(seed, frames, (48, 64))
        out.append((ArraySource(video.name, video.frames, video.masks), None, {"method": f"m{seed}"}))
    return out


def test_items_shapes_values_and_windows() -> None:
    videos = _videos()
    dataset = ClipDataset(videos, size=SIZE, compress_fraction=0.0)
    assert len(dataset) == 12
    item = dataset[7]  # video 1, frame 1
    assert item["clip"].shape == (3, 5, *SIZE) and item["clip"].dtype == torch.float32
    assert item["mask"].shape == (1, *SIZE) and item["mask"].dtype == torch.float32
    assert (item["video"], item["frame"], item["method"], item["compressed"]) == ("composed-1", 1, "m1", False)
    frames, masks = dataset.load(1)
    expected = frames[[1, 0, 1, 2, 3]].astype(np.float32) / 255  # reflected window around frame 1
    assert torch.equal(item["clip"], torch.from_numpy(expected).permute(3, 0, 1, 2))
    assert torch.equal(item["mask"][0], torch.from_numpy(masks[1]).float())
    assert set(torch.unique(item["mask"]).tolist()) == {0.0, 1.0}
    assert 0.0 <= float(item["clip"].min()) and float(item["clip"].max()) <= 1.0


def test_each_video_decoded_once() -> None:
    calls = []
    videos = _videos(1)
    source = videos[0][0]
    original = source.iter_frames

    def counting(size=None):
        calls.append(size)
        return original(size)

    source.iter_frames = counting
    dataset = ClipDataset(videos, size=SIZE, compress_fraction=0.0)
    for index in range(len(dataset)):
        dataset[index]
    assert calls == [SIZE]


def test_compression_fraction_is_deterministic_per_clip() -> None:
    composed = [compose_video(s, 40, (48, 64)) for s in range(2)]
    videos = [(v.frames, v.masks, {"video": f"v{s}"}) for s, v in enumerate(composed)]  # arrays in, arrays out
    a = ClipDataset(videos, size=SIZE, seed=0)
    b = ClipDataset(videos, size=SIZE, seed=0)
    c = ClipDataset(videos, size=SIZE, seed=1)
    chosen_a, chosen_b, chosen_c = ([d.is_compressed(d.videos[v].name, t) for v, t in d.index] for d in (a, b, c))
    assert chosen_a == chosen_b and chosen_a != chosen_c
    assert 0.15 < np.mean(chosen_a) < 0.35  # about a quarter of 80 clips
    index = chosen_a.index(True)
    item = a[index]
    assert item["compressed"]
    plain = ClipDataset(videos, size=SIZE, compress_fraction=0.0)[index]
    difference = (item["clip"] - plain["clip"]).abs()
    assert 0 < float(difference.mean()) < 0.06  # re-encoded: changed, but still the same picture
    assert torch.equal(item["mask"], plain["mask"])  # labels are never compressed
    assert not any(ClipDataset(videos, size=SIZE, compress_fraction=0.0).is_compressed("v0", t) for t in range(40))


def test_dataloader_batches_and_manifest(tmp_path: Path) -> None:
    for seed in range(2):
        video = compose_video(seed, 4, (48, 64))
        record = {
            "source_video": video.name, "source": "composed", "method": "copy", "split": "train", "config": {}, "seed": seed
        }
        write_forged_video(tmp_path, record, video.frames, video.masks)
    dataset = ClipDataset.from_manifest(tmp_path, split="train", size=SIZE, compress_fraction=0.0)
    assert len(dataset) == 8 and dataset[0]["method"] == "copy" and dataset[0]["video"] == "composed-0__copy"
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["clip"].shape == (2, 3, 5, *SIZE) and batch["mask"].shape == (2, 1, *SIZE)
    assert batch["frame"].tolist() == [0, 1]
    assert len(ClipDataset.from_manifest(tmp_path, split="test", size=SIZE)) == 0
