"""Inpainting videos larger than fit at once: a coarse pass, then full-resolution tiles around the hole.

Follows IIVI's progressive scheme (paper §4.1, appendix A.4) with any registered method. The
coarse pass fills a downscaled copy of the whole video, so every region of the hole gets the
video's global context. At full resolution only tiles that touch the hole are inpainted, each
on its own (the method sees a ``tile×tile`` crop of every frame), so the method's working
memory does not grow with the frame size. The upsampled coarse result is the prior: it gives
each tile's output its low frequencies (a Gaussian low-pass at the coarse pixel size), the tile
contributes the detail above them. Neighbouring tiles therefore share one coarse structure, and
their overlap is feathered with a linear ramp, so seams stay small. Known pixels are never changed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
from tqdm.auto import tqdm

from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint.base import InpaintResult, composite


@dataclass(frozen=True)
class HighResConfig:
    coarse: int = 432  # longest side of the coarse pass
    tile: int = 512  # side of a full-resolution tile (frames no larger than this are inpainted at once)
    overlap: int = 64  # pixels shared by neighbouring tiles, feathered

    def __post_init__(self) -> None:
        if self.coarse < 16 or self.tile < 32 or not 0 <= self.overlap <= self.tile // 2:
            raise ConfigError("highres: coarse must be ≥ 16, tile ≥ 32 and overlap in [0, tile/2]")


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering ``[0, length)`` with at least ``overlap`` shared pixels; the last is flush."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return sorted({round(i * (length - tile) / (count - 1)) for i in range(count)})


def tile_grid(height: int, width: int, holes: np.ndarray, cfg: HighResConfig) -> list[tuple[int, int]]:
    """Origins (y, x) of the tiles that touch the hole in any frame (``holes``: bool H×W union)."""
    side_y, side_x = min(cfg.tile, height), min(cfg.tile, width)
    return [
        (y, x)
        for y in _starts(height, side_y, cfg.overlap)
        for x in _starts(width, side_x, cfg.overlap)
        if holes[y : y + side_y, x : x + side_x].any()
    ]


def _ramp(side: int, overlap: int, shared: bool) -> np.ndarray:
    """1-D feather weights rising over ``overlap`` pixels at a start edge shared with an earlier tile."""
    ramp = np.ones(side, np.float32)
    if shared and overlap:
        ramp[:overlap] = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    return ramp


def _upsampled(image: np.ndarray, y: int, x: int, size: tuple[int, int], full: tuple[int, int]) -> np.ndarray:
    """The window ``size`` at (y, x) of ``image`` upsampled (bicubic) to ``full`` = (H, W), without
    materialising the whole upsampled frame."""
    sy, sx = image.shape[0] / full[0], image.shape[1] / full[1]
    inverse = np.float32([[sx, 0, (x + 0.5) * sx - 0.5], [0, sy, (y + 0.5) * sy - 0.5]])
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(image, inverse, (size[1], size[0]), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def inpaint_highres(
    method: Callable[..., InpaintResult],
    frames: np.ndarray,
    masks: np.ndarray,
    cfg: dict[str, Any] | None = None,
    method_cfg: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    workdir: Path | None = None,
) -> InpaintResult:
    """``method`` (a registered ``Method``, or anything called like one) applied coarse to fine:
    the method's contract, with working memory bounded by the tile size.

    ``cfg``: ``HighResConfig`` fields; ``method_cfg`` goes to every call of ``method``.
    Metrics: the coarse pass's own (prefixed ``coarse/``), ``highres/tiles`` and ``highres/scale``.
    """
    conf = HighResConfig(**(cfg or {}))
    t_count, height, width = masks.shape
    if max(height, width) <= conf.tile:
        return method(frames, masks, method_cfg, seed=seed, progress=progress, workdir=workdir)
    scale = min(1.0, conf.coarse / max(height, width))
    ch, cw = max(16, round(height * scale)), max(16, round(width * scale))
    small = np.stack([cv2.resize(f, (cw, ch), interpolation=cv2.INTER_AREA) for f in frames])
    # Any hole pixel inside a coarse pixel makes it a hole: the coarse pass must not keep object colour.
    small_masks = np.stack([cv2.resize(m.astype(np.float32), (cw, ch), interpolation=cv2.INTER_AREA) > 0 for m in masks])
    coarse = method(small, small_masks, method_cfg, seed=seed, progress=progress, workdir=workdir and workdir / "coarse")
    sigma = 0.5 / scale  # low-pass at the coarse pixel size

    out = frames.copy()
    tiles = tile_grid(height, width, masks.any(axis=0), conf)
    side_y, side_x = min(conf.tile, height), min(conf.tile, width)
    for n, (y, x) in enumerate(tqdm(tiles, desc="high-res tiles", disable=not progress, unit="tile")):
        crop = np.s_[:, y : y + side_y, x : x + side_x]
        hole = masks[crop]
        result = method(
            frames[crop], hole, method_cfg, seed=seed, progress=False, workdir=workdir and workdir / f"tile{n}"
        ).frames.astype(np.float32)
        for t in range(t_count):
            prior = _upsampled(coarse.frames[t], y, x, (side_y, side_x), (height, width))
            prior = np.where(hole[t][..., None], prior, frames[t, y : y + side_y, x : x + side_x]).astype(np.float32)
            detail = result[t] - cv2.GaussianBlur(result[t], (0, 0), sigma)
            result[t] = cv2.GaussianBlur(prior, (0, 0), sigma) + detail
        # Raster order: edges shared with an earlier tile (top, left) fade in over what it wrote.
        # A neighbour skipped for having no hole leaves no hole pixel in the overlap to care about.
        weight = np.outer(_ramp(side_y, conf.overlap, y > 0), _ramp(side_x, conf.overlap, x > 0))[None, ..., None]
        out[crop] = np.clip(out[crop] * (1 - weight) + result * weight, 0, 255).round().astype(np.uint8)
    metrics = {f"coarse/{k}": v for k, v in coarse.metrics.items()}
    metrics.update({"highres/tiles": float(len(tiles)), "highres/scale": scale})
    return InpaintResult(composite(out, frames, masks), metrics, {**coarse.config, "highres": asdict(conf)})


def seam_overlay(path: Path, frames: np.ndarray, masks: np.ndarray, cfg: dict[str, Any] | None = None) -> Path:
    """PNG to check seams by eye: the inpainted frame with the largest hole, cropped around the hole
    (at most 768 px wide), plain on the left, with the tile borders drawn on the right."""
    conf = HighResConfig(**(cfg or {}))
    t = int(masks.reshape(len(masks), -1).sum(axis=1).argmax())
    height, width = masks.shape[1:]
    ys, xs = np.nonzero(masks[t])
    pad = conf.overlap
    y0, y1 = max(0, ys.min() - pad), min(height, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(width, xs.max() + pad + 1)
    lines = frames[t].copy()
    side_y, side_x = min(conf.tile, height), min(conf.tile, width)
    for y, x in tile_grid(height, width, masks.any(axis=0), conf):
        cv2.rectangle(lines, (x, y), (x + side_x - 1, y + side_y - 1), (0, 255, 0), max(1, width // 1000))
    pair = np.concatenate([frames[t, y0:y1, x0:x1], lines[y0:y1, x0:x1]], axis=1)
    if pair.shape[1] > 1536:
        scale = 1536 / pair.shape[1]
        pair = cv2.resize(pair, (1536, max(1, round(pair.shape[0] * scale))), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), cv2.cvtColor(pair, cv2.COLOR_RGB2BGR))
    return path
