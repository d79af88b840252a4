"""Inpainting quality metrics on hand-made cases, the fixed-mask protocol, and the quality table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vilocal_dist.inpaint.metrics import PSNR_CAP_DB, fixed_masks, psnr, quality_metrics, temporal_consistency
from vilocal_dist.inpaint.quality import format_table, main, quality_table


def textured(t: int = 3, h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_psnr_of_a_known_mse() -> None:
    gt = np.full((4, 5, 3), 100, np.uint8)
    pred = gt + 10  # MSE = 100
    assert psnr(pred, gt) == pytest.approx(10 * math.log10(255**2 / 100))
    assert psnr(gt, gt) == math.inf  # identical: infinite, by definition
    assert math.isnan(psnr(pred, gt, np.zeros((4, 5), bool)))  # no pixels to compare


def test_hole_and_overall_scores() -> None:
    gt = textured()
    masks = fixed_masks(*gt.shape[:3])
    pred = gt.copy()
    pred[masks] = np.clip(gt[masks].astype(int) + 5, 0, 255).astype(np.uint8)
    pred[masks & (gt[..., 0] > 250)] = gt[masks & (gt[..., 0] > 250)]  # keep the +5 exact: no clipping
    err = (pred.astype(float) - gt) ** 2
    scores = quality_metrics(pred, gt, masks)
    expected_hole = np.mean([10 * math.log10(255**2 / err[i][masks[i]].mean()) for i in range(3)])
    expected_all = np.mean([10 * math.log10(255**2 / err[i].mean()) for i in range(3)])
    assert scores["psnr_hole"] == pytest.approx(expected_hole)
    assert scores["psnr"] == pytest.approx(expected_all)
    assert scores["psnr"] > scores["psnr_hole"]  # unchanged pixels outside only help
    assert scores["ssim_hole"] < scores["ssim"] < 1.0


def test_identical_video_scores_the_cap_and_ssim_one() -> None:
    gt = textured()
    scores = quality_metrics(gt, gt, fixed_masks(*gt.shape[:3]))
    assert scores["psnr"] == PSNR_CAP_DB and scores["psnr_hole"] == PSNR_CAP_DB
    assert scores["ssim"] == pytest.approx(1.0) and scores["ssim_hole"] == pytest.approx(1.0)


def test_frames_without_a_hole_are_skipped_in_hole_scores() -> None:
    gt = textured()
    masks = fixed_masks(*gt.shape[:3])
    masks[1] = False
    pred = gt.copy()
    pred[masks] = 0
    scores = quality_metrics(pred, gt, masks)
    assert scores["psnr_hole"] == pytest.approx(np.mean([psnr(pred[i], gt[i], masks[i]) for i in (0, 2)]))
    assert math.isnan(quality_metrics(pred, gt, np.zeros_like(masks))["psnr_hole"])


def test_temporal_consistency() -> None:
    still = np.repeat(textured(t=1, h=80, w=90), 4, axis=0)
    masks = fixed_masks(4, 80, 90)
    assert temporal_consistency(still, masks) == PSNR_CAP_DB
    # Motion within the ±20 px search is found exactly; independent noise frames match badly.
    base = textured(t=1, h=80, w=120)[0]
    panning = np.stack([base[:, 5 * i : 5 * i + 90] for i in range(4)])
    assert temporal_consistency(panning, masks) == PSNR_CAP_DB
    assert temporal_consistency(textured(t=4, h=80, w=90), masks) < 12.0
    # Small frames shrink the patch instead of failing.
    assert temporal_consistency(still[:, :30, :30], fixed_masks(4, 30, 30)) == PSNR_CAP_DB


def test_fixed_masks() -> None:
    masks = fixed_masks(2, 240, 432)
    assert masks.shape == (2, 240, 432) and masks.dtype == bool
    ys, xs = np.nonzero(masks[0])
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (60, 108)
    assert ys.min() == 240 - 1 - ys.max() and xs.min() == 432 - 1 - xs.max()  # centred
    assert (masks[0] == masks[1]).all()


def test_quality_table_and_markdown() -> None:
    gt = textured(t=3, h=32, w=48)
    masks = fixed_masks(3, 32, 48)
    videos = [("a", gt, masks, gt), ("b", gt[::-1].copy(), masks, gt[::-1].copy())]
    rows = quality_table(["telea", "ns"], videos, {"telea": {"radius": 2}})
    assert [(r["method"], r["video"]) for r in rows] == [
        ("telea", "a"), ("telea", "b"), ("telea", "mean"), ("ns", "a"), ("ns", "b"), ("ns", "mean"),
    ]  # fmt: skip
    assert rows[2]["psnr_hole"] == pytest.approx((rows[0]["psnr_hole"] + rows[1]["psnr_hole"]) / 2)
    table = format_table(rows)
    assert table.splitlines()[0].startswith("| method | video | PSNR |")
    assert len(table.splitlines()) == 2 + len(rows) and "**mean**" in table


def test_quality_script_on_a_composed_video(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--composed", "1", "--frames", "3", "--size", "32x48", "--methods", "telea"]) == 0
    out = capsys.readouterr().out
    assert "### composed (3 frames, 32x48)" in out and "| telea | composed-0 |" in out
