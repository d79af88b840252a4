"""Input validation: size limits checked before decoding, frame/mask normalisation.

Everything a user can get wrong raises :class:`~vilocal_dist.errors.InputError` naming the file
and the problem. Limits are checked against *declared* sizes (container headers, image headers)
before any pixel is decoded, so a hostile file cannot make us allocate gigabytes.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vilocal_dist.errors import ConfigError, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Largest input accepted; generous defaults (8192×8192 frames, 100k frames)."""

    max_width: int = 8192
    max_height: int = 8192
    max_pixels: int = 8192 * 8192
    max_frames: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_width", "max_height", "max_pixels", "max_frames"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Limits.{name} must be positive, got {getattr(self, name)}")


DEFAULT_LIMITS = Limits()


def check_frame_size(width: int, height: int, path: str | Path, limits: Limits = DEFAULT_LIMITS) -> None:
    """Reject zero-sized or over-limit declared frame sizes (before decoding)."""
    if width <= 0 or height <= 0:
        raise InputError(f"invalid frame size {width}x{height}", path)
    if width > limits.max_width or height > limits.max_height or width * height > limits.max_pixels:
        raise InputError(
            f"frame size {width}x{height} exceeds the limit "
            f"({limits.max_width}x{limits.max_height}, {limits.max_pixels} pixels)",
            path,
        )


def check_frame_count(num_frames: int, path: str | Path, limits: Limits = DEFAULT_LIMITS) -> None:
    """Reject over-limit declared frame counts (before decoding)."""
    if num_frames > limits.max_frames:
        raise InputError(f"{num_frames} frames exceeds the limit of {limits.max_frames}", path)


def check_same_size(expected_hw: tuple[int, int], got_hw: tuple[int, int], path: str | Path, what: str) -> None:
    """A mask (or frame) whose size differs from the video's frame size is an error."""
    if tuple(expected_hw) != tuple(got_hw):
        raise InputError(
            f"{what} size {got_hw[1]}x{got_hw[0]} differs from the frame size {expected_hw[1]}x{expected_hw[0]}",
            path,
        )


def check_mask_count(num_frames: int, num_masks: int, path: str | Path) -> None:
    """Every frame needs exactly one mask."""
    if num_frames != num_masks:
        raise InputError(f"{num_masks} masks for {num_frames} frames (need one mask per frame)", path)


def to_rgb_uint8(image: np.ndarray, path: str | Path, *, bgr: bool = False) -> np.ndarray:
    """Any decoded still image → uint8 H×W×3 RGB.

    Grayscale is replicated to three channels, an alpha channel is dropped (not composited:
    forensic traces live in the colour values), 16-bit images are scaled to 8 bits. ``bgr``
    says the channels are in OpenCV's BGR order.
    """
    if image.dtype == np.uint16:
        # 65535 / 257 = 255 exactly, so the mapping keeps 8-bit content stored as 16-bit intact.
        image = (image.astype(np.uint32) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(f"unsupported pixel type {image.dtype}", path)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise InputError(f"unsupported image shape {image.shape}", path)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    rgb = image[..., :3]
    if bgr:
        rgb = rgb[..., ::-1]
    return np.ascontiguousarray(rgb)


def binarize_mask(values: np.ndarray, path: str | Path) -> np.ndarray:
    """A grayscale mask image (H×W integer) → bool H×W, True = hole.

    Accepted as binary: values in {0, 1} (nonzero is the hole) or {0, 255}. Anything else
    (e.g. anti-aliased or JPEG-compressed masks) is thresholded at 128 — values >= 128 are the
    hole — with a warning naming the file, because a silently thresholded mask may not be
    what the user meant.
    """
    if values.ndim != 2:
        raise InputError(f"mask must be a single-channel image, got shape {values.shape}", path)
    if values.dtype == np.bool_:
        return values
    vmax = int(values.max()) if values.size else 0
    if vmax <= 1:
        return values > 0
    if vmax == 255 and not np.any((values > 0) & (values < 255)):
        return values == 255
    message = f"{path}: mask is not binary (values between 0 and {vmax}); thresholding at 128"
    warnings.warn(message, stacklevel=2)
    log.warning(message)
    return values >= 128
