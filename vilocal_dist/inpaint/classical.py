"""Classical inpainting baselines: per-frame OpenCV Telea / Navier–Stokes, and flow propagation.

``flowprop`` is a cheap flow-guided video fill in the spirit of flow-guided video inpainting:
estimate flow between neighbouring frames with DIS (on Telea-prefilled frames), complete it
inside each hole from the surrounding motion, then carry known pixels into the holes along the
flow, frame by frame, forward and then backward through the video. A hole pixel reached from both
sides blends the two candidates weighted by how many frames each travelled; what neither pass
reaches (content never seen in any frame) is filled spatially with Telea.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from vilocal_dist.errors import InputError
from vilocal_dist.inpaint.base import Fill, Method, MethodConfig
from vilocal_dist.inpaint.flow import DIS_PRESETS, complete_flow, dis_estimator, dis_flow, prefill, warp


@dataclass(frozen=True)
class SpatialConfig(MethodConfig):
    """Per-frame OpenCV inpainting (``telea`` / ``ns``)."""

    radius: int = 3  # neighbourhood radius (pixels) each fill step looks at

    def problems(self) -> list[str]:
        return [f"radius must be >= 1, got {self.radius}"] if self.radius < 1 else []


@dataclass(frozen=True)
class FlowPropConfig(MethodConfig):
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


def _spatial_fill(name: str, flag: int):
    def fill(frames: np.ndarray, masks: np.ndarray, config: SpatialConfig, *, seed: int, progress: bool,
             workdir: Path | None) -> Fill:  # fmt: skip
        full = np.flatnonzero(masks.reshape(len(masks), -1).all(axis=1))
        if full.size:
            # cv2.inpaint returns a frame with no known pixel unchanged: the hole would keep its content.
            raise InputError(f"frame {int(full[0])} is masked entirely: {name} fills each frame from its own "
                             "known pixels (use flowprop, iivi or intervi, which borrow from other frames)")
        out = frames.copy()
        for t in tqdm(range(len(frames)), desc=name, disable=not progress, leave=False):
            if masks[t].any():
                out[t] = cv2.inpaint(frames[t], masks[t].astype(np.uint8), config.radius, flag)
        return Fill(out)

    return fill


TELEA = Method("telea", SpatialConfig, _spatial_fill("telea", cv2.INPAINT_TELEA),
               "OpenCV Telea (fast marching) on each frame independently")  # fmt: skip
NS = Method("ns", SpatialConfig, _spatial_fill("ns", cv2.INPAINT_NS),
            "OpenCV Navier-Stokes on each frame independently")  # fmt: skip


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


def _flowprop(
    frames: np.ndarray, masks: np.ndarray, config: FlowPropConfig, *, seed: int, progress: bool, workdir: Path | None
) -> Fill:
    """Flow-guided propagation of known pixels into the holes, Telea for the rest (seed/workdir unused)."""
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
    return Fill(out, metrics={"flowprop/propagated_fraction": float(1.0 - unreached.sum() / max(int(masks.sum()), 1))})


FLOWPROP = Method("flowprop", FlowPropConfig, _flowprop, "flow-guided propagation of known pixels, Telea for the rest")
