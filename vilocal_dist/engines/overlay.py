"""Pictures of detections: a red tint on detected pixels, and frame | truth | prediction panels."""

from __future__ import annotations

import numpy as np

RED = np.array([255, 0, 0], dtype=np.float32)


def red_overlay(frame: np.ndarray, mask: np.ndarray, strength: float = 0.5) -> np.ndarray:
    """frame uint8 H×W×3, mask bool H×W -> the frame with masked pixels blended towards red.

    The output has even height and width (edge pixels repeated) so 4:2:0 H.264 accepts it.
    """
    out = frame.astype(np.float32)
    out[mask] = (1 - strength) * out[mask] + strength * RED
    out = out.round().astype(np.uint8)
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        out = np.pad(out, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return out


def side_by_side(frame: np.ndarray, truth: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """One panel: frame | ground truth (red) | prediction (red at ``threshold``), uint8 H×3W×3.

    frame uint8 H×W×3, truth bool H×W, prob float H×W in [0, 1].
    """
    return np.concatenate(
        [frame, red_overlay(frame, truth, 0.6)[: frame.shape[0], : frame.shape[1]],
         red_overlay(frame, prob > threshold, 0.6)[: frame.shape[0], : frame.shape[1]]],
        axis=1,
    )
