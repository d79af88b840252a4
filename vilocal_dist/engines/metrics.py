"""Pixel F1 / IoU per frame, accumulated batch by batch and summarised three ways.

Per frame, at a threshold on the probability map: ``F1 = 2·TP / (2·TP + FP + FN)`` and
``IoU = TP / (TP + FP + FN)``. Convention for frames whose ground truth is empty (stated in every
summary): empty GT and empty prediction score F1 = IoU = 1 (nothing to find, nothing claimed);
empty GT and a non-empty prediction score 0 (VIDNet's convention; the ViLocal authors' code
scores every empty-GT frame 0). The count of empty-GT frames is reported beside the scores.

Summaries: ``pooled`` = the mean of the per-frame scores over all frames of all videos (the paper's
number; the key keeps its old name); ``pixel_pooled`` = one F1/IoU from TP, FP, FN summed over all
frames (large holes weigh more; both conventions are used in the field); ``per_video`` = mean of
the per-video means (each video weighs the same); all also per inpainting method. The
trivial predictors (all-zeros, all-ones) are scored from the same ground truth, as a floor.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch

EMPTY_GT_CONVENTION = (
    "frames with empty ground truth: empty prediction -> F1=IoU=1, "
    "non-empty prediction -> F1=IoU=0 (VIDNet convention)"
)


def frame_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame (F1, IoU) from pixel counts; 0/0 (empty GT, empty prediction) scores 1."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    denom_f1 = 2 * tp + fp + fn
    denom_iou = tp + fp + fn
    f1 = np.where(denom_f1 > 0, 2 * tp / np.maximum(denom_f1, 1), 1.0)
    iou = np.where(denom_iou > 0, tp / np.maximum(denom_iou, 1), 1.0)
    return f1, iou


class MaskEvaluator:
    """Accumulates per-frame pixel counts: ``update`` per batch, ``compute`` at the end."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._rows: list[tuple[str, str, int, int, int, int, int]] = []  # video, method, frame, tp, fp, fn, n

    def update(
        self,
        probs: torch.Tensor,
        target: torch.Tensor,
        *,
        videos: Sequence[str] | None = None,
        methods: Sequence[str] | None = None,
        frames: Sequence[int] | None = None,
    ) -> None:
        """probs: [B,1,H,W] or [B,H,W] in [0,1]; target: same shape, {0,1} (or bool)."""
        pred = (probs > self.threshold).flatten(1)
        gt = (target > 0.5).flatten(1)
        tp = (pred & gt).sum(1).tolist()
        fp = (pred & ~gt).sum(1).tolist()
        fn = (~pred & gt).sum(1).tolist()
        n = pred.shape[1]
        b = pred.shape[0]
        videos = list(videos) if videos is not None else [""] * b
        methods = list(methods) if methods is not None else [""] * b
        frames = [int(f) for f in frames] if frames is not None else [-1] * b
        for i in range(b):
            self._rows.append((videos[i], methods[i], frames[i], tp[i], fp[i], fn[i], n))

    def __len__(self) -> int:
        return len(self._rows)

    def compute(self) -> dict[str, Any]:
        """Scores pooled over frames and averaged per video, overall and by method, plus baselines."""
        if not self._rows:
            return {"threshold": self.threshold, "convention": EMPTY_GT_CONVENTION, "frames": 0}
        video, method, _, tp, fp, fn, n = zip(*self._rows)
        tp, fp, fn, n = (np.asarray(a, dtype=np.int64) for a in (tp, fp, fn, n))
        f1, iou = frame_scores(tp, fp, fn)
        gt = tp + fn
        # Trivial predictors from the same ground truth: all-zeros has TP=FP=0, FN=|GT|;
        # all-ones has TP=|GT|, FP=N-|GT|, FN=0.
        zeros_f1, zeros_iou = frame_scores(np.zeros_like(gt), np.zeros_like(gt), gt)
        ones_f1, ones_iou = frame_scores(gt, n - gt, np.zeros_like(gt))
        out = {
            "threshold": self.threshold,
            "convention": EMPTY_GT_CONVENTION,
            **_summary(np.asarray(video), f1, iou, gt, (tp, fp, fn)),
            "baselines": {
                "all_zeros": _summary(np.asarray(video), zeros_f1, zeros_iou, gt, (0 * gt, 0 * gt, gt), brief=True),
                "all_ones": _summary(np.asarray(video), ones_f1, ones_iou, gt, (gt, n - gt, 0 * gt), brief=True),
            },
        }
        methods_arr = np.asarray(method)
        if any(methods_arr != ""):
            out["by_method"] = {
                m: _summary(np.asarray(video)[methods_arr == m], f1[methods_arr == m], iou[methods_arr == m],
                            gt[methods_arr == m], (tp[methods_arr == m], fp[methods_arr == m], fn[methods_arr == m]))
                for m in sorted(set(method))
            }
        per_video: dict[str, dict[str, Any]] = defaultdict(dict)
        for v in sorted(set(video)):
            sel = np.asarray(video) == v
            per_video[v] = {
                "method": str(methods_arr[sel][0]),
                "frames": int(sel.sum()),
                "empty_gt_frames": int((gt[sel] == 0).sum()),
                "f1": float(f1[sel].mean()),
                "iou": float(iou[sel].mean()),
            }
        out["video_scores"] = dict(per_video)
        return out


def _summary(
    video: np.ndarray, f1: np.ndarray, iou: np.ndarray, gt: np.ndarray,
    counts: tuple[np.ndarray, np.ndarray, np.ndarray], brief: bool = False,
) -> dict:  # fmt: skip
    """Mean over frames (``pooled``), from summed pixel counts ``(tp, fp, fn)`` (``pixel_pooled``)
    and per video (mean of video means) F1/IoU."""
    pix_f1, pix_iou = frame_scores(*(np.asarray([c.sum()]) for c in counts))
    names = sorted(set(video.tolist()))
    vf1 = [f1[video == v].mean() for v in names]
    viou = [iou[video == v].mean() for v in names]
    summary: dict[str, Any] = {
        "pooled": {"f1": float(f1.mean()), "iou": float(iou.mean())},
        "pixel_pooled": {"f1": float(pix_f1[0]), "iou": float(pix_iou[0])},
        "per_video": {"f1": float(np.mean(vf1)), "iou": float(np.mean(viou))},
    }
    if not brief:
        summary.update(frames=int(len(f1)), videos=len(names), empty_gt_frames=int((gt == 0).sum()))
    return summary
