"""Data sources: DAVIS layout (real and synthetic), file + masks, forged folders, composed specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vilocal_dist.data import ArraySource, PathSource, list_sequences, load_video, open_source, write_forged_video
from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.video import davis_palette, write_png_folder, write_video


def make_davis(root: Path, seq: str = "toy", t: int = 4, h: int = 16, w: int = 24, jpg: bool = True) -> np.ndarray:
    """A tiny DAVIS root: jpg frames, RGB colour-coded two-object annotations, binary Masks."""
    rng = np.random.default_rng(1)
    frames_dir = root / "JPEGImages" / "480p" / seq
    ann_dir = root / "Annotations" / "480p" / seq
    masks_dir = root / "Masks" / "480p" / seq
    for d in (frames_dir, ann_dir, masks_dir):
        d.mkdir(parents=True)
    index = np.zeros((t, h, w), dtype=np.uint8)
    for i in range(t):
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(frame).save(frames_dir / f"{i:05d}.{'jpg' if jpg else 'png'}")
        index[i, 2:5, 2 + i : 6 + i] = 1
        index[i, 10:12, 10:20] = 2
        Image.fromarray(davis_palette()[index[i]], "RGB").save(ann_dir / f"{i:05d}.png")
        Image.fromarray((index[i] > 0).astype(np.uint8) * 255, "L").save(masks_dir / f"{i:05d}.png")
    return index


def test_synthetic_davis_root_and_sequence_folder(tmp_path: Path) -> None:
    index = make_davis(tmp_path)
    seq_dir = tmp_path / "JPEGImages" / "480p" / "toy"
    for source in (open_source(tmp_path, seq="toy"), open_source(tmp_path), open_source(seq_dir)):
        assert isinstance(source, PathSource)
        assert (source.name, source.num_frames, source.height, source.width, source.num_masks) == ("toy", 4, 16, 24, 4)
    frames, masks = load_video(open_source(tmp_path))
    assert frames.shape == (4, 16, 24, 3) and frames.dtype == np.uint8
    assert np.array_equal(masks, index > 0)
    _, obj1 = load_video(open_source(tmp_path, object_id=1))
    _, obj2 = load_video(open_source(tmp_path, object_id=2))
    assert np.array_equal(obj1, index == 1) and np.array_equal(obj2, index == 2)
    _, binary = load_video(open_source(tmp_path, masks="masks"))
    assert np.array_equal(binary, index > 0)
    assert list_sequences(tmp_path) == ["toy"]


def test_davis_choices_and_errors(tmp_path: Path) -> None:
    make_davis(tmp_path, "a")
    make_davis(tmp_path, "b")
    with pytest.raises(ConfigError, match="2 sequences"):
        open_source(tmp_path)
    with pytest.raises(InputError, match="no sequence 'c'"):
        open_source(tmp_path, seq="c")
    with pytest.raises(ConfigError, match="masks must be one of"):
        open_source(tmp_path, seq="a", masks="labels")
    with pytest.raises(ConfigError, match="DAVIS root"):
        open_source(tmp_path / "JPEGImages" / "480p" / "a", seq="a")
    with pytest.raises(InputError, match="no such file"):
        open_source(tmp_path / "nothing")


def test_mask_folder_missing_one_frame_names_it(tmp_path: Path) -> None:
    make_davis(tmp_path)
    (tmp_path / "Annotations" / "480p" / "toy" / "00002.png").unlink()
    with pytest.raises(InputError, match=r"Annotations/480p/toy: 3 masks for 4 frames \(none for 00002\)"):
        open_source(tmp_path)


def test_mask_size_mismatch(tmp_path: Path) -> None:
    make_davis(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "Masks" / "480p" / "toy" / "00000.png")
    with pytest.raises(InputError, match="00000.png: mask size 8x8 differs from the frame size 24x16"):
        open_source(tmp_path, masks="masks")
    Image.fromarray(np.zeros((16, 24), np.uint8), "L").save(tmp_path / "Masks" / "480p" / "toy" / "00000.png")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "Masks" / "480p" / "toy" / "00003.png")
    with pytest.raises(InputError, match="00003.png: mask size 8x8 differs"):
        load_video(open_source(tmp_path, masks="masks"))


def test_video_file_with_mask_folder_and_mask_video(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    masks = np.zeros((5, 16, 24), dtype=bool)
    masks[:, 4:8, 6:12] = True
    video = write_video(tmp_path / "clip.mkv", frames)
    write_png_folder(tmp_path / "clip_masks", masks)
    mask_video = write_video(tmp_path / "mask.mkv", [np.repeat(m[..., None] * np.uint8(255), 3, axis=2) for m in masks])
    for mask_path in (tmp_path / "clip_masks", mask_video):
        source = open_source(video, mask_path=mask_path)
        assert source.name == "clip" and source.num_masks == 5
        got_frames, got_masks = load_video(source)
        assert np.array_equal(got_frames, frames) and np.array_equal(got_masks, masks)
    small_frames, small_masks = load_video(open_source(video, mask_path=mask_video), size=(8, 12), max_frames=2)
    assert small_frames.shape == (2, 8, 12, 3) and small_masks.shape == (2, 8, 12)
    assert small_masks[0, 2:4, 3:6].all() and small_masks.sum() == 2 * 6
    with pytest.raises(InputError, match="no masks"):
        load_video(video)
    _, empty = load_video(video, require_masks=False)
    assert not empty.any()
    with pytest.raises(InputError, match="4 masks for 5 frames"):
        open_source(video, mask_path=write_video(tmp_path / "short.mkv", frames[:4]))


def test_forged_video_folder_opens(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[:, 5:9, 5:9] = True
    record = {"source_video": "toy", "source": "x", "method": "copy", "split": "train", "config": {}, "seed": 0}
    full = write_forged_video(tmp_path, record, frames, masks)
    source = open_source(tmp_path / full["path"])
    assert source.name == "toy__copy"
    got_frames, got_masks = load_video(source)
    assert np.array_equal(got_frames, frames) and np.array_equal(got_masks, masks)


def test_composed_spec() -> None:
    source = open_source("composed:4:3:32x48")
    assert isinstance(source, ArraySource) and source.has_backgrounds
    assert (source.num_frames, source.height, source.width, source.num_masks) == (3, 32, 48, 3)
    backgrounds = np.stack(list(source.iter_backgrounds()))
    frames, masks = load_video(source)
    assert np.array_equal(frames[~masks], backgrounds[~masks])
    with pytest.raises(ConfigError, match="composed:SEED"):
        open_source("composed:x")


@pytest.mark.davis
def test_real_davis_sequence(davis_dir: Path) -> None:
    seq_dir = davis_dir / "JPEGImages" / "480p" / "bmx-trees"
    source = open_source(seq_dir)
    assert (source.num_frames, source.height, source.width, source.num_masks) == (80, 480, 854, 80)
    assert source.masks_path == davis_dir / "Annotations" / "480p" / "bmx-trees"
    dilated = open_source(davis_dir, seq="bmx-trees", masks="masks")
    assert dilated.masks_path == davis_dir / "Masks" / "480p" / "bmx-trees"
    _, merged = load_video(source, max_frames=3)
    _, rider = load_video(open_source(seq_dir, object_id=1), max_frames=3)
    _, bike = load_video(open_source(seq_dir, object_id=2), max_frames=3)
    _, big = load_video(dilated, max_frames=3)
    assert rider.any() and bike.any() and not (rider & bike).any()
    assert np.array_equal(merged, rider | bike)
    assert big.sum() > merged.sum() and big[merged].mean() > 0.99  # dilated masks cover the objects
