"""Coarse-to-fine tiled inpainting of frames larger than a tile (bounded working memory)."""

from __future__ import annotations

import numpy as np
import pytest

from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint.registry import get_method
from vilocal_dist.inpaint.highres import HighResConfig, inpaint_highres, tile_grid

T, H, W = 3, 96, 160


def _clip() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth colour ramps (the truth behind the hole), a magenta object, its masks."""
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    truth = np.stack([40 + xx, 60 + yy, 200 - 0.5 * xx], -1)
    truth = np.stack([truth + 4 * t for t in range(T)]).round().astype(np.uint8)
    masks = np.zeros((T, H, W), bool)
    for t in range(T):
        masks[t, 30:70, 50 + 10 * t : 110 + 10 * t] = True
    frames = truth.copy()
    frames[masks] = (255, 0, 255)
    return frames, masks, truth


def test_tiles_cover_the_hole_with_bounded_crops_and_seams():
    frames, masks, truth = _clip()
    telea = get_method("telea")
    seen: list[tuple[int, ...]] = []

    def spy(f, m, cfg=None, **kw):
        seen.append(f.shape)
        return telea(f, m, cfg, **kw)

    cfg = {"coarse": 40, "tile": 48, "overlap": 12}
    out = inpaint_highres(spy, frames, masks, cfg, progress=False)
    assert out.frames.shape == frames.shape and out.frames.dtype == np.uint8
    assert np.array_equal(out.frames[~masks], frames[~masks])  # known pixels untouched
    tiles = int(out.metrics["highres/tiles"])
    assert tiles == len(seen) - 1 >= 4  # one coarse pass, then several tiles
    assert max(seen[0][1:3]) == 40  # the coarse pass ran on the downscaled video
    assert all(s[1] <= 48 and s[2] <= 48 for s in seen[1:])  # no call saw more than a tile
    every = len(tile_grid(H, W, np.ones((H, W), bool), HighResConfig(**cfg)))
    assert tiles < every  # tiles without a hole are skipped
    # No object colour left, and the fill tracks the smooth truth; seams stay small.
    error = np.abs(out.frames.astype(int) - truth)[masks]
    assert error.max() < 40 and error.mean() < 8
    row = out.frames[1, 50].astype(int)  # a row through the hole crossing several tile seams
    assert np.abs(np.diff(row, axis=0)).max() < 12


def test_frames_within_a_tile_are_inpainted_at_once():
    frames, masks, _ = _clip()
    calls = []

    def spy(f, m, cfg=None, **kw):
        calls.append(f.shape)
        return get_method("telea")(f, m, cfg, **kw)

    inpaint_highres(spy, frames, masks, {"tile": 160}, progress=False)
    assert calls == [frames.shape]


def test_bad_config():
    with pytest.raises(ConfigError, match="overlap"):
        HighResConfig(tile=64, overlap=40)
