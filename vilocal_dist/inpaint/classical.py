"""Classical inpainting baselines: per-frame OpenCV Telea / Navier–Stokes, and flow propagation.

``flowprop`` is a cheap flow-guided video fill in the spirit of flow-guided video inpainting:
estimate flow between neighbouring frames with DIS (on Telea-prefilled frames), complete it
inside each hole from the surrounding motion, then carry known pixels into the holes along the
flow, frame by frame, forward and then backward through the video. A hole pixel reached from both
sides blends the two candidates weighted by how many frames each travelled; what neither pass
reaches (content never seen in any frame) is filled spatially with Telea.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.inpaint.base import (
    InpaintResult,
    check_cfg,
    check_inputs,
    coerce_option,
    composite,
    register_method,
)
from vilocal_dist.inpaint.flow import DIS_PRESETS, complete_flow, dis_estimator, dis_flow, prefill, warp


@dataclass(frozen=True)
class SpatialConfig:
    """Per-frame OpenCV inpainting (``telea`` / ``ns``)."""

    radius: int = 3  # neighbourhood radius (pixels) each fill step looks at

    def problems(self) -> list[str]:
        return [f"radius must be >= 1, got {self.radius}"] if self.radius < 1 else []


@dataclass(frozen=True)
class FlowPropConfig:
    """Flow-guided temporal propagation (``flowprop``)."""

    dis_preset: str = "medium"  # OpenCV DIS preset: ultrafast | fast | medium
    flow_margin: int = 8  # band (pixels) around each hole whose flow is also re-grown (DIS patch size)
    radius: int = 3  # Telea radius for the final spatial fill of never-seen pixels

    def problems(self) -> list[str]:
        checks = [
            (self.dis_preset in DIS_PRESETS, f"dis_preset must be one of {sorted(DIS_PRESETS)}, got {self.dis_preset!r}"),
            (self.flow_margin >= 0, f"flow_margin must be >= 0, got {self.flow_margin}"),
            (self.radius >= 1, f"radius must be >= 1, got {self.radius}"),
        ]
        return [message for ok, message in checks if not ok]


def _resolve(cls: type, cfg: dict[str, Any] | None, method: str) -> Any:
    """``cfg`` over the defaults of config class ``cls``, types coerced, ranges checked."""
    merged = check_cfg(cfg, asdict(cls()), method)
    config = cls(**{k: coerce_option(method, k, v, getattr(cls, k)) for k, v in merged.items()})
    problems = config.problems()
    if problems:
        raise ConfigError(f"{method}: " + "; ".join(problems))
    return config


def _spatial(frames: np.ndarray, masks: np.ndarray, radius: int, flag: int, progress: bool, desc: str) -> np.ndarray:
    out = frames.copy()
    for t in tqdm(range(len(frames)), desc=desc, disable=not progress, leave=False):
        if masks[t].any():
            out[t] = cv2.inpaint(frames[t], masks[t].astype(np.uint8), radius, flag)
    return out


def _spatial_method(name: str, flag: int):
    def method(
        frames: np.ndarray,
        masks: np.ndarray,
        cfg: dict[str, Any] | None = None,
        *,
        seed: int = 0,
        progress: bool = True,
        workdir: Path | None = None,
    ) -> InpaintResult:
        check_inputs(frames, masks)
        config = _resolve(SpatialConfig, cfg, name)
        full = np.flatnonzero(masks.reshape(len(masks), -1).all(axis=1))
        if full.size:
            # cv2.inpaint returns a frame with no known pixel unchanged: the hole would keep its content.
            raise InputError(f"frame {int(full[0])} is masked entirely: {name} fills each frame from its own "
                             "known pixels (use flowprop, iivi or intervi, which borrow from other frames)")
        filled = _spatial(frames, masks, config.radius, flag, progress, name)
        return InpaintResult(frames=composite(filled, frames, masks), config={"method": name, **asdict(config)})

    method.__name__ = name
    method.__doc__ = f"OpenCV cv2.inpaint ({name}) on each frame independently; seed/workdir unused."
    return method


def _spatial_config(name: str):
    return lambda cfg: _resolve(SpatialConfig, cfg, name)


telea = register_method("telea", config=_spatial_config("telea"))(_spatial_method("telea", cv2.INPAINT_TELEA))
ns = register_method("ns", config=_spatial_config("ns"))(_spatial_method("ns", cv2.INPAINT_NS))


def _propagate(
    frames: np.ndarray, masks: np.ndarray, flows: dict[int, np.ndarray], order: range, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """One pass: carry values into holes from the frame ``t - step`` along ``flows[t]`` (t -> t-step).

    Returns (float32 T×H×W×3 values, int T×H×W frames travelled; 0 = not reached). A filled pixel
    counts as known for the next frame, so content travels across many frames.
    """
    values = frames.astype(np.float32)
    hops = np.zeros(masks.shape, np.int32)
    hops[masks] = -1  # -1 = still unknown
    for t in order:
        src = t - step
        todo = hops[t] < 0
        if not todo.any():
            continue
        flow = flows[t]
        # Known in the source frame = never a hole, or already reached by this pass. Bilinear
        # sampling renormalised over known neighbours, so a sub-pixel flow does not stall the front.
        src_known = (hops[src] >= 0).astype(np.float32)
        coverage = warp(src_known, flow)
        reachable = todo & (coverage > 0.5)
        carried = warp(values[src] * src_known[..., None], flow) / np.maximum(coverage, 1e-6)[..., None]
        values[t][reachable] = carried[reachable]
        src_hops = warp(np.maximum(hops[src], 0).astype(np.float32), flow, nearest=True)
        hops[t][reachable] = src_hops[reachable].astype(np.int32) + 1
    hops[hops < 0] = 0
    return values, hops


@register_method("flowprop", config=lambda cfg: _resolve(FlowPropConfig, cfg, "flowprop"))
def flowprop(
    frames: np.ndarray,
    masks: np.ndarray,
    cfg: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    workdir: Path | None = None,
) -> InpaintResult:
    """Flow-guided propagation of known pixels into the holes, Telea for the rest (seed/workdir unused).

    frames: uint8 T×H×W×3, masks: bool T×H×W (True = hole) -> composited uint8 T×H×W×3.
    """
    check_inputs(frames, masks)
    config = _resolve(FlowPropConfig, cfg, "flowprop")
    n = len(frames)
    estimator = dis_estimator(config.dis_preset)
    filled = np.stack([prefill(f, m, config.radius) for f, m in zip(frames, masks)])
    to_prev: dict[int, np.ndarray] = {}  # t -> flow t -> t-1
    to_next: dict[int, np.ndarray] = {}  # t -> flow t -> t+1
    for t in tqdm(range(n - 1), desc="flowprop flow", disable=not progress, leave=False):
        forward = dis_flow(filled[t], filled[t + 1], estimator)
        to_next[t] = complete_flow(forward, masks[t], config.flow_margin)
        backward = dis_flow(filled[t + 1], filled[t], estimator)
        to_prev[t + 1] = complete_flow(backward, masks[t + 1], config.flow_margin)

    fwd_vals, fwd_hops = _propagate(frames, masks, to_prev, range(1, n), step=1)
    bwd_vals, bwd_hops = _propagate(frames, masks, to_next, range(n - 2, -1, -1), step=-1)
    # Blend: the candidate that travelled fewer frames (less resampling blur, less drift) weighs more.
    w_f = np.where(fwd_hops > 0, 1.0 / np.maximum(fwd_hops, 1), 0.0)[..., None]
    w_b = np.where(bwd_hops > 0, 1.0 / np.maximum(bwd_hops, 1), 0.0)[..., None]
    total = w_f + w_b
    blended = (w_f * fwd_vals + w_b * bwd_vals) / np.maximum(total, 1e-8)
    out = np.where(total > 0, np.clip(np.rint(blended), 0, 255), frames).astype(np.uint8)

    unreached = masks & (total[..., 0] == 0)
    for t in np.flatnonzero(unreached.reshape(n, -1).any(axis=1)):
        out[t] = cv2.inpaint(out[t], unreached[t].astype(np.uint8), config.radius, cv2.INPAINT_TELEA)
    metrics = {"flowprop/propagated_fraction": float(1.0 - unreached.sum() / max(int(masks.sum()), 1))}
    record = {"method": "flowprop", **asdict(config)}
    return InpaintResult(frames=composite(out, frames, masks), metrics=metrics, config=record)
