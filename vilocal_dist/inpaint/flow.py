"""Classical optical flow for inpainting: OpenCV DIS, forward–backward check, hole completion.

InterVI's reference flow came from a pretrained PWC-Net; no pretrained flow network can be
loaded here, so OpenCV's DIS (dense inverse search) stands in. The same helpers drive the
flow-guided propagation baseline.

Flow convention: ``flow[y, x] = (dx, dy)`` maps pixel (x, y) of the *source* frame to
(x + dx, y + dy) in the *target* frame, so ``warp(target, flow)`` re-samples the target onto the
source grid (backward warping).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from vilocal_dist.errors import ConfigError

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
_DIS_MIN_SIZE = 16  # OpenCV's DIS rejects smaller frames (its pyramid needs a few 8-pixel patches)


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame


def dis_estimator(preset: str = "medium") -> cv2.DISOpticalFlow:
    """A DIS estimator for one of ``DIS_PRESETS``; reuse it across calls (it keeps no state)."""
    if preset not in DIS_PRESETS:
        raise ConfigError(f"unknown DIS preset {preset!r}; known: {sorted(DIS_PRESETS)}")
    return cv2.DISOpticalFlow_create(DIS_PRESETS[preset])


def dis_flow(src: np.ndarray, dst: np.ndarray, estimator: cv2.DISOpticalFlow | None = None) -> np.ndarray:
    """Flow ``src -> dst`` (float32 H×W×2, pixels) for uint8 H×W×3 RGB (or H×W gray) frames."""
    estimator = estimator or dis_estimator()
    src, dst = _gray(src), _gray(dst)
    h, w = src.shape
    if min(h, w) < _DIS_MIN_SIZE:
        # DIS refuses frames this small; replicate-pad, estimate, crop back.
        pad = dict(top=0, bottom=max(_DIS_MIN_SIZE - h, 0), left=0, right=max(_DIS_MIN_SIZE - w, 0))
        src = cv2.copyMakeBorder(src, borderType=cv2.BORDER_REPLICATE, **pad)
        dst = cv2.copyMakeBorder(dst, borderType=cv2.BORDER_REPLICATE, **pad)
    return estimator.calc(src, dst, None)[:h, :w]


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray, *, nearest: bool = False) -> np.ndarray:
    """Backward warp: ``out[y, x] = image[y + dy, x + dx]`` (bilinear; zeros outside the frame).

    image: H×W or H×W×C (any dtype cv2.remap takes); flow: float32 H×W×2.
    """
    map_x, map_y = _sample_grid(flow)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(image, map_x, map_y, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def inside_frame(flow: np.ndarray) -> np.ndarray:
    """bool H×W: the flow target lies inside the frame (with a half-pixel margin for bilinear)."""
    h, w = flow.shape[:2]
    map_x, map_y = _sample_grid(flow)
    return (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)


def fb_consistent(fwd: np.ndarray, bwd: np.ndarray, alpha: float = 0.01, beta: float = 0.5) -> np.ndarray:
    """Forward–backward check (Sundaram et al. 2010): bool H×W, True where ``fwd`` is reliable.

    A pixel passes when going forward then back returns near its start,
    ``|f + b(x+f)|² < alpha (|f|² + |b(x+f)|²) + beta``, and its target is inside the frame;
    failures are occlusions or estimation errors.
    """
    bwd_at_target = warp(bwd, fwd)
    round_trip = np.sum((fwd + bwd_at_target) ** 2, axis=-1)
    tolerance = alpha * (np.sum(fwd**2, axis=-1) + np.sum(bwd_at_target**2, axis=-1)) + beta
    return (round_trip < tolerance) & inside_frame(fwd)


def _push_pull(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels of float32 H×W×C ``values`` from a pyramid of valid-weighted averages.

    Each level halves the resolution averaging only valid pixels, until none is missing; going back
    up, missing pixels take the bilinearly upsampled coarser level. A smooth, boundary-driven fill
    (exact for a constant field) in O(H·W).
    """
    h, w = valid.shape
    if valid.all():
        return values
    if not valid.any():
        return np.zeros_like(values)
    if min(h, w) <= 2:
        return np.where(valid[..., None], values, values[valid].mean(axis=0))
    size = (max(w // 2, 1), max(h // 2, 1))
    weight = valid.astype(np.float32)
    coarse_w = cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
    coarse_sum = cv2.resize(values * weight[..., None], size, interpolation=cv2.INTER_AREA).reshape(*coarse_w.shape, -1)
    coarse_valid = coarse_w > 1e-6
    coarse = coarse_sum / np.maximum(coarse_w, 1e-6)[..., None]
    filled = _push_pull(coarse.astype(np.float32), coarse_valid)
    up = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
    return np.where(valid[..., None], values, up)


def complete_flow(flow: np.ndarray, hole: np.ndarray, margin: int = 8) -> np.ndarray:
    """Replace ``flow`` (float32 H×W×2) inside ``hole`` (bool H×W) by a smooth fill from outside.

    Flow inside a hole was estimated on made-up content, so it is discarded and re-grown from the
    surrounding motion by push–pull diffusion — exact for a rigid translation of the background.
    DIS matches 8-pixel patches, so a ``margin`` band around the hole is contaminated too and is
    re-grown as well. (cv2.inpaint is no substitute here: on float input it is not accurate to a
    pixel.)
    """
    if not hole.any():
        return flow
    drop = hole.astype(np.uint8)
    if margin > 0:
        drop = cv2.dilate(drop, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1)))
    return _push_pull(flow.astype(np.float32), drop == 0)


def prefill(frame: np.ndarray, hole: np.ndarray, radius: int = 3) -> np.ndarray:
    """Telea-filled copy of a uint8 RGB frame, so flow estimation does not see the hole's edges."""
    if not hole.any():
        return frame
    return cv2.inpaint(frame, hole.astype(np.uint8), radius, cv2.INPAINT_TELEA)


def known_flow_mask(flow: np.ndarray, known_src: np.ndarray, known_dst: np.ndarray) -> np.ndarray:
    """InterVI's reliable-flow region ``M_i ∩ M_j(F_ij)``: bool H×W, known in the source and
    landing (all four bilinear neighbours) on known pixels of the target inside the frame."""
    landed = warp(known_dst.astype(np.float32), flow)
    return known_src & (landed > 0.999) & inside_frame(flow)


class FlowPair(NamedTuple):
    """Reference flow from frame i to frame j and the masks InterVI's losses need (H×W each)."""

    flow: np.ndarray  # float32 H×W×2, i -> j
    known: np.ndarray  # bool: M_i ∩ M_j(F_ij), known in i and landing on known pixels of j
    reliable: np.ndarray  # bool: ``known`` and forward–backward consistent (supervise flow here)


class FlowCache:
    """Reference flows between frames of one video, computed lazily and memoised.

    frames: uint8 T×H×W×3, masks: bool T×H×W (True = hole). Flow is estimated on Telea-prefilled
    frames so the hole's edges do not drag the motion of the known pixels around them. Memory:
    about 10 bytes per pixel per pair kept (both directions), e.g. ~0.6 GB for 80 frames at
    240×432 with InterVI's six offsets.
    """

    def __init__(
        self, frames: np.ndarray, masks: np.ndarray, *, preset: str = "medium", alpha: float = 0.01, beta: float = 0.5
    ) -> None:
        self.masks = masks
        self._estimator = dis_estimator(preset)
        self._alpha, self._beta = alpha, beta
        self._filled = [prefill(f, m) for f, m in zip(frames, masks)]
        self._raw: dict[tuple[int, int], np.ndarray] = {}
        self._pairs: dict[tuple[int, int], FlowPair] = {}

    def _flow(self, i: int, j: int) -> np.ndarray:
        if (i, j) not in self._raw:
            self._raw[(i, j)] = dis_flow(self._filled[i], self._filled[j], self._estimator)
        return self._raw[(i, j)]

    def pair(self, i: int, j: int) -> FlowPair:
        """The reference flow i -> j with its known-flow and reliable masks."""
        if (i, j) not in self._pairs:
            fwd, bwd = self._flow(i, j), self._flow(j, i)
            known = known_flow_mask(fwd, ~self.masks[i], ~self.masks[j])
            reliable = known & fb_consistent(fwd, bwd, self._alpha, self._beta)
            self._pairs[(i, j)] = FlowPair(fwd, known, reliable)
        return self._pairs[(i, j)]
