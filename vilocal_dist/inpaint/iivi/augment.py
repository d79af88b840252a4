"""IIVI's training-time augmentations: mask dilation, augmented holes, and the random transform g.

All randomness is drawn from one ``numpy.random.Generator`` that the fit loop owns, so a
checkpoint of its state makes a resumed run draw exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import kornia
import numpy as np
import torch


def dilate_masks(masks: np.ndarray, kernel: int) -> np.ndarray:
    """Dilate bool ``T×H×W`` masks by a ``kernel×kernel`` square (authors' code: 12×12, once)."""
    if kernel <= 1:
        return masks.copy()
    k = np.ones((kernel, kernel), np.uint8)
    return np.stack([cv2.dilate(m.astype(np.uint8), k) > 0 for m in masks])


def _boxes(masks: np.ndarray) -> np.ndarray:
    """Per frame ``(y0, x0, y1, x1)`` of the mask's bounding box (inclusive); −1s when empty."""
    boxes = np.full((len(masks), 4), -1, np.int64)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(ys):
            boxes[i] = ys.min(), xs.min(), ys.max(), xs.max()
    return boxes


class MaskAugmenter:
    """Draws the augmented hole M'_t: the mask of a random frame t, cyclically translated.

    ``boundary_aware`` is the paper's appendix sampling: translations that put M'_t's centre within a
    band around the own mask's bounding box (45 px of 320 rows, 80 px of 600 columns, scaled to the
    frame) are five times as likely as others, so more training holes sit near the real one.
    """

    BAND = (45 / 320, 80 / 600)
    BOOST = 5.0

    def __init__(self, masks: np.ndarray, *, boundary_aware: bool = False) -> None:
        self.masks = masks  # bool T×H×W (the dilated holes)
        self.boundary_aware = boundary_aware
        self.boxes = _boxes(masks)

    def sample(self, rng: np.random.Generator, frame_idx: np.ndarray) -> list[tuple[int, int, int]]:
        """One ``(other_frame, dy, dx)`` per entry of ``frame_idx``."""
        t_count, h, w = self.masks.shape
        params = []
        for i in frame_idx:
            t = int(rng.integers(t_count))
            if self.boundary_aware and self.boxes[i, 0] >= 0 and self.boxes[t, 0] >= 0:
                cy, cx = self._boundary_centre(rng, int(i), h, w)
                by0, bx0, by1, bx1 = self.boxes[t]
                dy, dx = (cy - (by0 + by1) // 2) % h, (cx - (bx0 + bx1) // 2) % w
            else:
                dy, dx = int(rng.integers(h)), int(rng.integers(w))
            params.append((t, int(dy), int(dx)))
        return params

    def _boundary_centre(self, rng: np.random.Generator, i: int, h: int, w: int) -> tuple[int, int]:
        # Rejection sampling: a uniform centre is kept always inside the band, else with p = 1/BOOST.
        y0, x0, y1, x1 = self.boxes[i]
        my, mx = round(self.BAND[0] * h), round(self.BAND[1] * w)
        while True:
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
            if (y0 - my <= cy <= y1 + my and x0 - mx <= cx <= x1 + mx) or rng.random() < 1 / self.BOOST:
                return cy, cx

    @staticmethod
    def apply(pool: torch.Tensor, params: list[tuple[int, int, int]]) -> torch.Tensor:
        """``pool`` bool (T, 1, H, W) → the translated masks (B, 1, H, W)."""
        return torch.stack([torch.roll(pool[t], shifts=(dy, dx), dims=(-2, -1)) for t, dy, dx in params])


def training_holes(
    own: torch.Tensor, augmented: torch.Tensor, holdout: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_hole, supervised)`` for a batch of bool (B, 1, H, W) masks.

    The network sees the frame with ``own ∪ augmented ∪ holdout`` removed; the loss uses every pixel
    outside ``own`` and ``holdout`` — the augmented region is the self-supervision signal, the own hole
    is never supervised (its true pixels are unknown) and held-out pixels stay unseen.
    """
    unseen = own if holdout is None else own | holdout
    return unseen | augmented, ~unseen


@dataclass(frozen=True)
class GTransform:
    """A drawn g: pixel homography (B, 3, 3), intensity factors (B,), blur kernel sizes (B,)."""

    matrix: torch.Tensor
    intensity: torch.Tensor
    blur: tuple[int, ...]


# Paper appendix A.3 ranges.
TRANSLATE_PX, ROTATE_DEG, SCALE, SHEAR_DEG, INTENSITY = 3.0, 2.0, (0.95, 1.05), 1.0, (0.95, 1.05)
BLUR_SIZES = (3, 5)


def sample_g(rng: np.random.Generator, batch: int, h: int, w: int, device: torch.device) -> GTransform:
    """Random small homography (translation, rotation, scale, shear about the centre) + manipulation."""
    u = lambda lo, hi: torch.tensor(rng.uniform(lo, hi, batch), dtype=torch.float32)  # noqa: E731
    trans = torch.stack([u(-TRANSLATE_PX, TRANSLATE_PX), u(-TRANSLATE_PX, TRANSLATE_PX)], dim=1)
    scale = u(*SCALE).unsqueeze(1).repeat(1, 2)
    centre = torch.tensor([[(w - 1) / 2, (h - 1) / 2]]).repeat(batch, 1)
    shear = np.deg2rad(SHEAR_DEG)
    matrix = kornia.geometry.transform.get_affine_matrix2d(
        trans, centre, scale, u(-ROTATE_DEG, ROTATE_DEG), u(-shear, shear), u(-shear, shear)
    )
    blur = tuple(int(k) for k in rng.choice(BLUR_SIZES, batch))
    return GTransform(matrix.to(device), u(*INTENSITY).to(device), blur)


def warp(x: torch.Tensor, g: GTransform, *, mode: str = "bilinear", padding: str = "border") -> torch.Tensor:
    return kornia.geometry.transform.warp_perspective(
        x, g.matrix.to(x.dtype), tuple(x.shape[-2:]), mode=mode, padding_mode=padding, align_corners=True
    )


def apply_g_image(x: torch.Tensor, g: GTransform) -> torch.Tensor:
    """g(x) for frames (B, 3, H, W) in [0, 1]: warp, intensity change, Gaussian blur."""
    y = warp(x, g) * g.intensity.view(-1, 1, 1, 1).to(x.dtype)
    # OpenCV's default sigma for a k×k kernel: the "standard" Gaussian of that size.
    blurred = [
        kornia.filters.gaussian_blur2d(y[i : i + 1], (k, k), (0.3 * ((k - 1) / 2 - 1) + 0.8,) * 2)
        for i, k in enumerate(g.blur)
    ]
    return torch.cat(blurred).clamp(0, 1)


def apply_g_mask(m: torch.Tensor, g: GTransform) -> torch.Tensor:
    """g(M) for bool masks (B, 1, H, W): the warp only (the paper skips manipulation filters on masks)."""
    return warp(m.float(), g, mode="nearest", padding="zeros") > 0.5


def g_valid(like: torch.Tensor, g: GTransform) -> torch.Tensor:
    """Bool (B, 1, H, W): pixels of g(x) whose source lies inside the frame (no border fill)."""
    ones = torch.ones_like(like[:, :1])
    return warp(ones, g, padding="zeros") > 0.999
