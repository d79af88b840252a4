"""The ``iivi`` method: train IIVI on one video and return its prediction (no Ray, no MLflow).

Checkpoints (model, Adam, iteration, RNG state, smoothed losses, config) go to ``workdir`` every
``ckpt_every`` iterations by atomic replace; a rerun with the same workdir, video, config and seed
continues from the last one and reaches the same weights as an uninterrupted run.

With ``recon_cache`` set, the state at the end of phase 1 is also kept there under a fingerprint
of everything phase 1 depends on. Fits that differ only in phase 2 (the regulariser ablations:
λ_a, λ_s, the VGG, iters_reg) start from it: phase 1 is paid once per video, and every variant
starts phase 2 from the very same network, which makes the comparison paired.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from vilocal_dist.device import pick_device
from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint.base import Fill, InpaintResult, Method
from vilocal_dist.inpaint.iivi.augment import dilate_masks
from vilocal_dist.inpaint.iivi.config import IIVIConfig
from vilocal_dist.inpaint.iivi.trainer import IIVITrainer, VideoTensors
from vilocal_dist.inpaint.selfval import holdout_masks, holdout_psnr
from vilocal_dist.inpaint.stopping import phase_plateau, record_point, scaled_dilation

CKPT_NAME = "iivi_state.pt"
# Options that change neither the data nor the optimisation path: a resume may alter them.
_RESUMABLE_CHANGES = ("ckpt_every", "device", "amp", "recompute", "recon_cache")
# Options phase 1 never reads (it trains on the reconstruction loss alone).
_PHASE2_ONLY = {"lambda_a": 0.0, "lambda_s": 0.0, "iters_reg": 0, "vgg_layer": "relu3_4", "vgg_weights": None,
                "random_vgg": False}


def to_working_size(frames: np.ndarray, masks: np.ndarray, cfg: IIVIConfig) -> tuple[np.ndarray, np.ndarray]:
    """Frames (area-resampled) and masks at the working resolution; a working pixel is a hole if
    any of the native pixels it covers is (so no object pixel leaks in through resampling)."""
    if cfg.size_h == 0 or frames.shape[1:3] == (cfg.size_h, cfg.size_w):
        return frames, masks
    size = (cfg.size_w, cfg.size_h)
    small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    small_masks = np.stack([cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0 for m in masks])
    return small, small_masks


def _to_native(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Float ``T×h×w×3`` in [0, 1] → uint8 at native ``(H, W)``."""
    if pred.shape[1:3] != shape:
        pred = np.stack([cv2.resize(p, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) for p in pred])
    return np.clip(np.rint(pred * 255), 0, 255).astype(np.uint8)


def _fingerprint(frames: np.ndarray, masks: np.ndarray, cfg: IIVIConfig, seed: int) -> str:
    h = hashlib.sha256()
    h.update(frames.tobytes())
    h.update(np.packbits(masks).tobytes())
    h.update(repr({k: v for k, v in sorted(asdict(cfg).items()) if k not in _RESUMABLE_CHANGES}).encode())
    h.update(str(seed).encode())
    return h.hexdigest()


def _recon_fingerprint(frames: np.ndarray, masks: np.ndarray, cfg: IIVIConfig, seed: int) -> str:
    """The fingerprint of phase 1 alone (the cosine schedule spans both phases: then iters_reg counts)."""
    neutral = {k: v for k, v in _PHASE2_ONLY.items() if not (k == "iters_reg" and cfg.lr_schedule == "cosine")}
    return "recon-" + _fingerprint(frames, masks, replace(cfg, **neutral), seed)


def _save(path: Path, trainer: IIVITrainer, cfg: IIVIConfig, fingerprint: str, stopping: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**trainer.state_dict(), "config": asdict(cfg), "fingerprint": fingerprint, "stopping": stopping}, tmp)
    os.replace(tmp, path)


def _resume(path: Path, trainer: IIVITrainer, fingerprint: str) -> dict[str, Any] | None:
    """Load the checkpoint into ``trainer``; returns the stopping rule's saved state (None: fresh)."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location=trainer.device, weights_only=True)
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(
            "checkpoint belongs to another video, config or seed; use a fresh workdir or delete it", path
        )
    trainer.load_state_dict(state)
    return state.get("stopping")


def _fit(frames: np.ndarray, masks: np.ndarray, cfg: IIVIConfig, *, seed: int, progress: bool,
         workdir: Path | None) -> Fill:  # fmt: skip
    """Train one IIVI network on ``frames`` and predict every frame (uncomposited, native size).

    Each phase (reconstruction, then regularised) runs until the stopping rule sees a plateau of
    ``selfval/psnr`` or reaches its maximum (``iters_recon``, ``iters_reg``).
    """
    device = pick_device(cfg.device)
    small, small_masks = to_working_size(frames, masks, cfg)
    holes = dilate_masks(small_masks, scaled_dilation(cfg.dilate, small.shape[1], cfg.dilate_ref_rows))
    holdout = holdout_masks(holes, cfg.holdout, seed)
    trainer = IIVITrainer(VideoTensors.from_numpy(small, holes, holdout, device), cfg, seed=seed, device=device)
    # Held-out pixels lie outside masks: the composited result gets their true values back.
    native_holdout = _to_native_mask(holdout, frames.shape[1:3]) & ~masks

    ckpt, fingerprint, saved = None, _fingerprint(frames, masks, cfg, seed), None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        ckpt = workdir / CKPT_NAME
        saved = _resume(ckpt, trainer, fingerprint)
    phase = 1 if cfg.iters_recon > 0 else 2
    plateau = phase_plateau(cfg.stop_rule(cfg.iters_recon if phase == 1 else cfg.iters_reg), cfg.lr_schedule)
    history: list[dict[str, float]] = []
    cached = None
    if cfg.recon_cache and phase == 1:
        cached = Path(cfg.recon_cache) / f"{_recon_fingerprint(frames, masks, cfg, seed)}.pt"
        if not saved:
            saved = _resume(cached, trainer, cached.stem)
    if saved:
        phase, history = saved["phase"], list(saved["history"])
        plateau = phase_plateau(cfg.stop_rule(cfg.iters_recon if phase == 1 else cfg.iters_reg), cfg.lr_schedule)
        plateau.load_state_dict(saved["plateau"])

    def stopping_state() -> dict[str, Any]:
        return {"phase": phase, "plateau": plateau.state_dict(), "history": history}

    # The clock goes on from the last saved point, so a resumed fit's curve stays monotonic in seconds.
    resumed_at = time.perf_counter()
    start_iter, start = trainer.iteration, resumed_at - (history[-1]["seconds"] if history else 0.0)
    with tqdm(total=cfg.total_iters, initial=start_iter, desc="iivi", disable=not progress, unit="it") as bar:
        while phase <= 2:
            phase_start = 0 if phase == 1 else trainer.recon_end
            if trainer.iteration - phase_start >= plateau.rule.max_iters:
                phase_end = True
            else:
                trainer.lr_scale = plateau.scale
                trainer.step()
                bar.update(1)
                if trainer.iteration % 25 == 0:
                    bar.set_postfix({k: f"{v:.4f}" for k, v in trainer.logs.items()})
                local, phase_end = trainer.iteration - phase_start, False
                if plateau.due(local):
                    pred = _to_native(trainer.predict(hide_holdout=True), frames.shape[1:3])
                    point = {"iteration": float(trainer.iteration), "seconds": time.perf_counter() - start,
                             "phase": float(phase), "selfval/psnr": holdout_psnr(pred, frames, native_holdout)}  # fmt: skip
                    point = record_point(history, point, lambda: _to_native(trainer.predict(hide_holdout=False), frames.shape[1:3]), masks)
                    phase_end = plateau.update(local, point["selfval/psnr"])
            if phase_end:
                if phase == 1:
                    trainer.recon_end = trainer.iteration
                    bar.total = trainer.iteration + cfg.iters_reg
                phase += 1
                plateau = phase_plateau(cfg.stop_rule(cfg.iters_reg), cfg.lr_schedule, plateau)
                if cached is not None and phase == 2:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    _save(cached, trainer, cfg, cached.stem, stopping_state())
            if ckpt is not None and (trainer.iteration % cfg.ckpt_every == 0 or phase > 2):
                _save(ckpt, trainer, cfg, fingerprint, stopping_state())
    seconds = time.perf_counter() - start

    pred = _to_native(trainer.predict(hide_holdout=False), frames.shape[1:3])
    metrics = {f"train/{k}": v for k, v in trainer.logs.items()}
    metrics |= {"train/iters": float(trainer.iteration), "train/iters_recon": float(trainer.recon_end),
                "train/seconds": seconds}  # fmt: skip
    if trainer.iteration > start_iter:
        metrics["train/iters_per_s"] = (trainer.iteration - start_iter) / max(time.perf_counter() - resumed_at, 1e-9)
    if cfg.holdout > 0:
        hidden = _to_native(trainer.predict(hide_holdout=True), frames.shape[1:3])
        metrics["selfval/psnr"] = holdout_psnr(hidden, frames, native_holdout)
    vgg = trainer.vgg.describe() if trainer.vgg is not None else "unused"
    return Fill(pred, metrics=metrics, record={"vgg": vgg}, history=history)


IIVI = Method("iivi", IIVIConfig, _fit, "IIVI (Ouyang et al. 2021): one generator trained per video")


def fit_one_video(
    frames: np.ndarray,
    masks: np.ndarray,
    cfg: IIVIConfig | dict[str, Any] | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    workdir: Path | str | None = None,
    gt_frames: np.ndarray | None = None,
) -> InpaintResult:
    """Inpaint ``masks`` (bool T×H×W, True = hole) in ``frames`` (uint8 T×H×W×3) with IIVI.

    Returns the composited video (original pixels outside ``masks``) and metrics: ``train/*`` losses
    (smoothed), ``selfval/psnr`` on held-out known pixels (when ``cfg.holdout`` > 0), and
    ``true/hole_psnr`` when the true backgrounds ``gt_frames`` (uint8 T×H×W×3) are given.
    """
    if gt_frames is not None and gt_frames.shape != frames.shape:
        raise ValueError(f"gt_frames shape {gt_frames.shape} differs from frames {frames.shape}")
    result = IIVI(frames, masks, cfg, seed=seed, progress=progress, workdir=workdir)
    if gt_frames is not None:
        result.metrics["true/hole_psnr"] = holdout_psnr(result.frames, gt_frames, masks)  # PSNR restricted to the hole
    return result


def _to_native_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape[1:] == shape:
        return mask
    size = (shape[1], shape[0])
    return np.stack([cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 for m in mask])
