"""Inpainting quality: PSNR / SSIM on composited frames (overall and inside the hole) and InterVI's
temporal-consistency patch metric, plus the fixed-mask evaluation protocol.

Conventions (from the papers and the field's evaluation notes):

* Frames are uint8 ``T×H×W×3`` RGB, data range 255; masks bool ``T×H×W``, True = hole.
* Video scores are the mean of per-frame scores.
* PSNR of two identical images is mathematically infinite: ``psnr`` returns ``inf`` then. Video
  means cap each frame at ``PSNR_CAP_DB`` first, so one perfect frame (e.g. a frame with no hole,
  composited) does not turn the whole mean into ``inf``; a perfect video scores exactly the cap.
* SSIM uses skimage's default 7×7 uniform window (the "default window"; the 65-pixel window some
  public scripts use is not comparable). ``ssim`` is skimage's mean SSIM over the frame;
  ``ssim_hole`` is the mean of the same SSIM map over hole pixels only (so windows straddling the
  hole boundary count too).
* Frames without hole pixels are skipped in hole metrics; a video with no hole at all gets NaN.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from skimage.metrics import structural_similarity

#: Per-frame PSNR ceiling (dB) used in video means; uint8 errors this small mean "identical".
PSNR_CAP_DB = 100.0
#: InterVI's temporal-consistency patch side and search radius (pixels).
TC_PATCH = 50
TC_RADIUS = 20


def psnr(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of uint8 images (any shape ``…×3``), over ``mask`` pixels (bool, shape[:-1]) if given.

    Identical inputs give ``inf``; an empty mask gives NaN.
    """
    diff = pred.astype(np.float64) - gt.astype(np.float64)
    if mask is not None:
        diff = diff[mask]
    if diff.size == 0:
        return math.nan
    mse = float(np.mean(diff**2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim_map(pred: np.ndarray, gt: np.ndarray) -> tuple[float, np.ndarray]:
    """skimage SSIM of two uint8 H×W×3 frames: (mean SSIM, float H×W map averaged over channels)."""
    mean, full = structural_similarity(gt, pred, channel_axis=-1, data_range=255, full=True)
    return float(mean), full.mean(axis=-1)


def _centred_patch(hole: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of a ``size``-square patch centred on the hole's bounding box, kept in frame."""
    ys, xs = np.nonzero(hole)
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    h, w = hole.shape
    top = int(np.clip(cy - size // 2, 0, h - size))
    left = int(np.clip(cx - size // 2, 0, w - size))
    return top, left


def temporal_consistency(
    frames: np.ndarray, masks: np.ndarray, patch: int = TC_PATCH, radius: int = TC_RADIUS
) -> float:
    """InterVI's temporal consistency (dB, higher = steadier) of an inpainted video.

    For each frame i with a hole and a successor, take the ``patch``×``patch`` patch centred on the
    hole (bounding-box centre, shifted to lie inside the frame; the side shrinks to fit small
    frames) and find, among all patches of frame i+1 displaced by at most ``radius`` pixels in x
    and y, the best PSNR to it; average over frames (each capped at ``PSNR_CAP_DB``). NaN when no
    frame qualifies. frames: uint8 T×H×W×3, masks: bool T×H×W.
    """
    n, h, w = masks.shape
    size = min(patch, h, w)
    scores = []
    for i in range(n - 1):
        if not masks[i].any():
            continue
        top, left = _centred_patch(masks[i], size)
        ref = frames[i, top : top + size, left : left + size].astype(np.float32)
        y0, y1 = max(top - radius, 0), min(top + radius + size, h)
        x0, x1 = max(left - radius, 0), min(left + radius + size, w)
        region = frames[i + 1, y0:y1, x0:x1].astype(np.float32)
        # candidates: (dy, dx, c, py, px) — every patch position in the search window
        candidates = sliding_window_view(region, (size, size), axis=(0, 1))
        mse = np.mean((candidates - np.moveaxis(ref, -1, 0)) ** 2, axis=(2, 3, 4))
        best = float(mse.min())
        scores.append(PSNR_CAP_DB if best == 0 else min(10.0 * math.log10(255.0**2 / best), PSNR_CAP_DB))
    return float(np.mean(scores)) if scores else math.nan


def _mean_capped(values: list[float]) -> float:
    kept = [min(v, PSNR_CAP_DB) for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def quality_metrics(pred: np.ndarray, gt: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Quality of an inpainted video against its ground truth.

    pred, gt: uint8 T×H×W×3 (pred is composited: equal to gt outside the hole), masks: bool T×H×W.
    Returns ``psnr``, ``ssim`` (whole frames), ``psnr_hole``, ``ssim_hole`` (hole pixels only) and
    ``tc`` (temporal consistency of ``pred``, dB) — all means over frames, see the module notes.
    """
    if pred.shape != gt.shape or pred.shape[:3] != masks.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape}, gt {gt.shape}, masks {masks.shape}")
    psnr_all, psnr_hole, ssim_all, ssim_hole = [], [], [], []
    for p, g, m in zip(pred, gt, masks):
        psnr_all.append(psnr(p, g))
        mean, smap = ssim_map(p, g)
        ssim_all.append(mean)
        if m.any():
            psnr_hole.append(psnr(p, g, m))
            ssim_hole.append(float(smap[m].mean()))
    return {
        "psnr": _mean_capped(psnr_all),
        "ssim": float(np.mean(ssim_all)),
        "psnr_hole": _mean_capped(psnr_hole),
        "ssim_hole": float(np.mean(ssim_hole)) if ssim_hole else math.nan,
        "tc": temporal_consistency(pred, masks),
    }


def fixed_masks(t: int, h: int, w: int) -> np.ndarray:
    """The fixed-mask protocol: bool T×H×W, a centred rectangle of ¼ the width and ¼ the height."""
    mh, mw = max(h // 4, 1), max(w // 4, 1)
    top, left = (h - mh) // 2, (w - mw) // 2
    masks = np.zeros((t, h, w), dtype=bool)
    masks[:, top : top + mh, left : left + mw] = True
    return masks
