"""Mean-of-frames F1 (``pooled``) against truly pooled F1 (``pixel_pooled``) on a hand-computed case."""

from __future__ import annotations

import pytest
import torch

from vilocal_dist.engines.metrics import MaskEvaluator


def test_pixel_pooled_sums_counts_over_frames() -> None:
    # Frame 0: GT 2 px, prediction hits 1 of them   -> TP 1, FP 0, FN 1 -> F1 2/3, IoU 1/2.
    # Frame 1: GT 1 px, prediction is all 4 pixels  -> TP 1, FP 3, FN 0 -> F1 2/5, IoU 1/4.
    gt = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    probs = torch.tensor([[[0.9, 0.1], [0.1, 0.1]], [[0.9, 0.9], [0.9, 0.9]]])
    ev = MaskEvaluator(threshold=0.5)
    ev.update(probs, gt, videos=["v", "v"], methods=["m", "m"])
    out = ev.compute()
    assert out["pooled"]["f1"] == pytest.approx((2 / 3 + 2 / 5) / 2)  # mean of per-frame scores
    assert out["pooled"]["iou"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    # Summed: TP 2, FP 3, FN 1 -> F1 = 4 / (4 + 3 + 1) = 0.5, IoU = 2 / 6.
    assert out["pixel_pooled"] == pytest.approx({"f1": 0.5, "iou": 1 / 3})
    assert out["by_method"]["m"]["pixel_pooled"]["f1"] == pytest.approx(0.5)
    # All-ones baseline: TP 3, FP 5, FN 0 -> F1 = 6 / 11.
    assert out["baselines"]["all_ones"]["pixel_pooled"]["f1"] == pytest.approx(6 / 11)
