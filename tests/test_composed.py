"""Built-in composed videos: determinism, ground truth, motion, object coverage, dataset files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vilocal_dist.data import compose_video, load_video, open_source, write_composed_dataset


def test_same_seed_same_video_different_seeds_differ() -> None:
    a, b = compose_video(3, 4, (64, 96)), compose_video(3, 4, (64, 96))
    c = compose_video(4, 4, (64, 96))
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.frames, c.frames) and not np.array_equal(a.masks, c.masks)


@pytest.mark.parametrize("seed", range(6))
def test_ground_truth_coverage_and_motion(seed: int) -> None:
    video = compose_video(seed, 10, (96, 128))
    assert video.frames.shape == (10, 96, 128, 3) and video.masks.shape == (10, 96, 128)
    assert video.frames.dtype == np.uint8 and video.masks.dtype == np.bool_
    # Outside the objects the frame IS the clean background; inside, the object differs from it.
    assert np.array_equal(video.frames[~video.masks], video.backgrounds[~video.masks])
    assert (video.frames[video.masks] != video.backgrounds[video.masks]).any(axis=-1).mean() > 0.9
    coverage = video.masks.mean(axis=(1, 2))
    assert coverage.min() > 0.03 and coverage.max() < 0.15
    # The camera moves (backgrounds change) and the objects move (mask centroid travels).
    assert np.abs(video.backgrounds[0].astype(int) - video.backgrounds[-1]).mean() > 1
    centroids = [np.argwhere(m).mean(axis=0) for m in video.masks]
    assert np.linalg.norm(centroids[0] - centroids[-1]) > 1


def test_masks_vary_across_seeds() -> None:
    masks = [compose_video(seed, 1, (64, 64)).masks[0] for seed in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not np.array_equal(masks[i], masks[j])


def test_rejects_tiny_sizes() -> None:
    with pytest.raises(ValueError):
        compose_video(0, 0, (64, 64))
    with pytest.raises(ValueError):
        compose_video(0, 2, (8, 64))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_is_byte_identical_for_a_seed_and_readable(tmp_path: Path) -> None:
    first = write_composed_dataset(tmp_path / "a", 2, 3, (32, 48), seed=7, progress=False)
    write_composed_dataset(tmp_path / "b", 2, 3, (32, 48), seed=7, progress=False)
    write_composed_dataset(tmp_path / "c", 2, 3, (32, 48), seed=8, progress=False)
    a, b, c = (_tree_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert len(a) == 1 + 2 * 3 * 3  # composed.json + frames, masks, backgrounds of 2 videos
    assert a["JPEGImages/480p/composed-s7-000/00000.png"] != c["JPEGImages/480p/composed-s8-000/00000.png"]
    assert first[0] == tmp_path / "a" / "JPEGImages" / "480p" / "composed-s7-000"

    source = open_source(first[1])
    assert source.has_backgrounds
    assert (source.num_frames, source.height, source.width, source.num_masks) == (3, 32, 48, 3)
    frames, masks = load_video(source)
    expected = compose_video((7, 1), 3, (32, 48))
    assert np.array_equal(frames, expected.frames) and np.array_equal(masks, expected.masks)  # lossless PNG
    assert np.array_equal(np.stack(list(source.iter_backgrounds())), expected.backgrounds)
