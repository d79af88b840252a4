"""Self-validation for any inpainting method: hold out known pixels, score the fill there.

A method treats the held-out pixels as extra holes (unseen in its input, unsupervised), and its
prediction there is compared with the true pixels. No ground truth is needed, so a sweep can use
``selfval/psnr`` to choose hyperparameters per video. The held-out regions are shaped like the
video's own object masks (translated copies), since a method's skill on blob-shaped holes need not
carry over to object-shaped ones; a video without masks falls back to ellipses.
"""

from __future__ import annotations

import math

import numpy as np

_MAX_DRAWS_PER_FRAME = 50


def holdout_masks(masks: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Bool ``T×H×W``: about ``fraction`` of the known (``~masks``) pixels, disjoint from ``masks``.

    Each region is the mask of a random frame, cyclically translated at random onto a random frame;
    a region bigger than twice the remaining budget is replaced by an ellipse of the budget's size.
    """
    if masks.ndim != 3 or masks.dtype != np.bool_:
        raise ValueError(f"masks must be bool T×H×W, got {masks.dtype} {masks.shape}")
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    t_count, h, w = masks.shape
    out = np.zeros_like(masks)
    budget = int(round(fraction * (~masks).sum()))
    if budget == 0:
        return out
    rng = np.random.default_rng(seed)
    shapes = [m for m in masks if m.any()]
    taken = 0
    for _ in range(_MAX_DRAWS_PER_FRAME * t_count):
        remaining = budget - taken
        if remaining <= 0:
            break
        t = int(rng.integers(t_count))
        region = None
        if shapes:
            shape = shapes[int(rng.integers(len(shapes)))]
            region = np.roll(shape, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))
            if (region & ~masks[t] & ~out[t]).sum() > 2 * remaining:
                region = None
        if region is None:
            region = _ellipse(rng, h, w, min(remaining, max(16, h * w // 30)))
        region &= ~masks[t] & ~out[t]
        out[t] |= region
        taken += int(region.sum())
    return out


def _ellipse(rng: np.random.Generator, h: int, w: int, area: int) -> np.ndarray:
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    ry = max(1.0, math.sqrt(area / (math.pi * aspect)))
    rx = max(1.0, aspect * ry)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    yy, xx = np.ogrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def holdout_psnr(pred: np.ndarray, frames: np.ndarray, holdout: np.ndarray) -> float:
    """PSNR (dB) of ``pred`` vs ``frames`` on the held-out pixels (all channels).

    ``pred``, ``frames``: ``T×H×W×3``, both uint8 (peak 255) or both float in [0, 1] (peak 1);
    ``holdout`` bool ``T×H×W``. NaN when nothing is held out; inf for an exact fill.
    """
    if pred.shape != frames.shape or holdout.shape != frames.shape[:3]:
        raise ValueError(f"shape mismatch: pred {pred.shape}, frames {frames.shape}, holdout {holdout.shape}")
    if not holdout.any():
        return float("nan")
    peak = 255.0 if frames.dtype == np.uint8 else 1.0
    diff = pred[holdout].astype(np.float64) - frames[holdout].astype(np.float64)
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10.0 * math.log10(peak**2 / mse)
