"""Self-validation: held-out regions avoid the holes, have the asked size, and are scored correctly."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from vilocal_dist.inpaint.selfval import holdout_masks, holdout_psnr


def _masks(t: int = 6, h: int = 40, w: int = 60) -> np.ndarray:
    masks = np.zeros((t, h, w), bool)
    for i in range(t):
        masks[i, 10:22, 5 + 6 * i : 15 + 6 * i] = True  # a 12×10 object moving right
    return masks


def test_holdout_is_disjoint_and_about_the_asked_fraction():
    masks = _masks()
    held = holdout_masks(masks, 0.1, seed=3)
    budget = 0.1 * (~masks).sum()
    assert not (held & masks).any()
    assert budget <= held.sum() <= 2 * budget


def test_holdout_regions_are_shaped_like_the_masks():
    masks = np.zeros((4, 40, 60), bool)
    masks[:, 5:9, 5:9] = True  # a 4×4 square everywhere
    held = holdout_masks(masks, 0.02, seed=0)
    # Held-out regions are translated copies of the 4×4 square (cut only by the frame's wrap-around
    # or by touching each other), not arbitrary pixels.
    areas = [
        stats[1:, cv2.CC_STAT_AREA]
        for stats in (cv2.connectedComponentsWithStats(f.astype(np.uint8), connectivity=4)[2] for f in held)
    ]
    areas = np.concatenate(areas)
    assert len(areas) >= 6 and np.mean(areas == 16) >= 0.5


def test_holdout_is_a_function_of_the_seed():
    masks = _masks()
    assert np.array_equal(holdout_masks(masks, 0.05, 1), holdout_masks(masks, 0.05, 1))
    assert not np.array_equal(holdout_masks(masks, 0.05, 1), holdout_masks(masks, 0.05, 2))


def test_zero_fraction_and_maskless_videos():
    masks = _masks()
    assert not holdout_masks(masks, 0.0, 0).any()
    empty = np.zeros((3, 30, 40), bool)
    held = holdout_masks(empty, 0.05, 0)  # no object shapes to copy: ellipses instead
    assert 0.05 * empty.size <= held.sum() <= 0.1 * empty.size


def test_holdout_psnr_hand_computed():
    frames = np.full((2, 4, 4, 3), 100, np.uint8)
    pred = frames.copy()
    holdout = np.zeros((2, 4, 4), bool)
    holdout[0, :2, :2] = True
    pred[holdout] = 110  # error 10 on every held-out channel value: MSE 100
    pred[~holdout] = 0  # errors elsewhere must not count
    assert holdout_psnr(pred, frames, holdout) == pytest.approx(10 * math.log10(255**2 / 100))
    assert holdout_psnr(frames, frames, holdout) == math.inf
    assert math.isnan(holdout_psnr(pred, frames, np.zeros_like(holdout)))
    as_float = holdout_psnr(pred / 255.0, frames / 255.0, holdout)
    assert as_float == pytest.approx(10 * math.log10(255**2 / 100))
