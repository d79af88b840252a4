"""Fitting InterVI to one video: curriculum, optimisation loop, checkpoints; the ``intervi`` method.

Curriculum (paper §3.2, appendix C.4): a batch is ``batch_frames`` frames consecutive at a fixed
stride t ∈ strides, supervised with the flows to i+t *or* to i−t (one direction per batch: both at
once was seen to cause artifacts); each batch gets ``updates_per_batch`` updates before the next;
batches are every (offset, start) pair, visited in a fresh seeded random order each epoch. The
order is a pure function of (seed, step), so a run resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from tqdm import tqdm

from vilocal_dist.device import pick_device
from vilocal_dist.inpaint.base import Fill, Method
from vilocal_dist.inpaint.flow import FlowCache
from vilocal_dist.inpaint.intervi.config import InterVIConfig
from vilocal_dist.inpaint.intervi.losses import PERCEPTUAL_LAYERS, BatchTargets, flow_scale, intervi_losses
from vilocal_dist.inpaint.intervi.net import SkipNet, padded_size
from vilocal_dist.inpaint.selfval import holdout_masks, holdout_psnr
from vilocal_dist.inpaint.stopping import lr_factor, phase_plateau, record_point
from vilocal_dist.inpaint.vgg import default_weights, load_vgg_features

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "intervi-checkpoint.pt"
# Changing these must not invalidate a checkpoint: runtime-only settings, and the length of the
# run (the schedule is a function of the step, so a longer run continues a shorter one).
_NOT_FINGERPRINTED = ("device", "checkpoint_every", "iterations")


def curriculum(n_frames: int, config: InterVIConfig) -> list[tuple[int, list[int]]]:
    """Every batch of the curriculum as ``(signed offset, frame indices)``.

    A stride too long for ``batch_frames`` frames in a short video uses as many as fit.
    """
    batches = []
    for t in config.strides:
        size = min(config.batch_frames, (n_frames - 1) // t + 1)
        for offset in (t, -t):
            for start in range(n_frames - (size - 1) * t):
                batches.append((offset, [start + k * t for k in range(size)]))
    return batches


def batch_at(step: int, batches: list[tuple[int, list[int]]], updates_per_batch: int, seed: int) -> tuple[int, list[int]]:
    """The batch that update ``step`` trains on (a permutation of all batches per epoch)."""
    index = step // updates_per_batch
    epoch, within = divmod(index, len(batches))
    order = np.random.default_rng([seed, epoch]).permutation(len(batches))
    return batches[int(order[within])]


def _perceptual(config: InterVIConfig, device: torch.device) -> tuple[torch.nn.Module | None, str]:
    """The VGG-16 loss network if weights are configured, and how the term ran (for the record)."""
    if config.w_perceptual == 0:
        return None, "off (w_perceptual=0)"
    path = config.vgg_weights or default_weights("vgg16")
    if path is None:
        return None, "off (no VGG-16 weights)"
    vgg = load_vgg_features("vgg16", weights=path, layers=PERCEPTUAL_LAYERS, device=device)
    return vgg, f"on (VGG-16 {vgg.describe()})"


def _fingerprint(frames: np.ndarray, masks: np.ndarray, config: InterVIConfig, seed: int) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(frames).tobytes())
    digest.update(np.packbits(masks).tobytes())
    settings = {k: v for k, v in asdict(config).items() if k not in _NOT_FINGERPRINTED}
    digest.update(json.dumps([settings, seed, frames.shape], sort_keys=True).encode())
    return digest.hexdigest()


def _save_atomic(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _targets(
    flows: FlowCache, frames_t: torch.Tensor, known_t: torch.Tensor, offset: int, idx: list[int]
) -> BatchTargets:
    """Stack the supervision of one batch; pairs leaving the video get zero masks."""
    n = known_t.shape[0]
    h, w = known_t.shape[-2:]
    ref = np.zeros((len(idx), h, w, 2), np.float32)
    reliable = np.zeros((len(idx), h, w), np.float32)
    known_flow = np.zeros((len(idx), h, w), np.float32)
    for b, i in enumerate(idx):
        if 0 <= i + offset < n:
            pair = flows.pair(i, i + offset)
            ref[b], reliable[b], known_flow[b] = pair.flow, pair.reliable, pair.known
    position = {i: b for b, i in enumerate(idx)}
    partner = [position.get(i + offset, -1) for i in idx]
    dev = frames_t.device
    return BatchTargets(
        frames=frames_t[idx],
        known=known_t[idx],
        ref_flow=torch.from_numpy(rearrange(ref, "b h w c -> b c h w")).to(dev) / flow_scale(h, w, dev),
        reliable=torch.from_numpy(reliable).unsqueeze(1).to(dev),
        known_flow=torch.from_numpy(known_flow).unsqueeze(1).to(dev),
        partner=torch.tensor(partner, dtype=torch.long, device=dev),
    )


def _forward(net: SkipNet, noise: torch.Tensor, h: int, w: int, amp: bool) -> dict[str, torch.Tensor]:
    with torch.autocast(device_type=noise.device.type, dtype=torch.bfloat16, enabled=amp):
        out = net(noise)
    # Crop the padded output back to the frame, and compute losses in float32.
    return {k: v[..., :h, :w].float() for k, v in out.items()}


def fit_intervi(
    frames: np.ndarray,
    masks: np.ndarray,
    config: InterVIConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    workdir: Path | None = None,
) -> Fill:
    """Train InterVI on one video and generate every frame.

    frames: uint8 T×H×W×3, masks: bool T×H×W (True = hole). Returns the raw prediction (not
    composited), the metrics and the runtime facts for the record.
    """
    n, h, w = masks.shape
    device = pick_device(config.device)
    amp = config.amp and device.type == "cuda"
    torch.manual_seed(seed)
    offsets = config.signed_offsets
    net = SkipNet(
        widths=config.widths,
        flow_channels=2 * len(offsets),
        enc_kernel=config.enc_kernel,
        dec_kernel=config.dec_kernel,
        skip_channels=config.skip_channels,
    ).to(device)
    optim = torch.optim.Adam(net.parameters(), lr=config.lr)
    vgg, perceptual = _perceptual(config, device)

    hp, wp = padded_size(h, w, config.scales, config.enc_kernel)
    gen = torch.Generator().manual_seed(seed)
    noise = (torch.rand(n, 1, hp, wp, generator=gen) * config.noise_scale).to(device)
    frames_t = torch.from_numpy(rearrange(frames, "t h w c -> t c h w").copy()).to(device).float() / 255.0
    holdout = holdout_masks(masks, config.holdout, seed)  # unseen by losses and flows alike
    unseen = masks | holdout
    known_t = torch.from_numpy(~unseen).unsqueeze(1).to(device).float()
    flows = FlowCache(frames, unseen, preset=config.dis_preset, alpha=config.fb_alpha, beta=config.fb_beta)
    plateau, history = phase_plateau(config.stop_rule, config.lr_schedule), []
    batches = curriculum(n, config)

    step, fingerprint, ckpt = 0, _fingerprint(frames, masks, config, seed), None
    last: dict[str, float] = {}  # loss terms of the latest finished batch
    if workdir is not None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        ckpt = workdir / CHECKPOINT_NAME
        if ckpt.is_file():
            state = torch.load(ckpt, map_location=device, weights_only=True)
            if state.get("fingerprint") == fingerprint and int(state["step"]) <= config.iterations:
                net.load_state_dict(state["model"])
                optim.load_state_dict(state["optim"])
                step, last = int(state["step"]), dict(state["last"])
                history = list(state.get("history", []))
                plateau.load_state_dict(state.get("plateau", plateau.state_dict()))
                log.info("intervi: resuming from %s at update %d/%d", ckpt, step, config.iterations)
            else:
                log.warning("intervi: %s is for another video, config or a longer run; starting afresh", ckpt)

    def save() -> None:
        if ckpt is not None:
            state = {"fingerprint": fingerprint, "step": step, "model": net.state_dict(), "optim": optim.state_dict()}
            state |= {"history": history, "plateau": plateau.state_dict()}
            _save_atomic({**state, "last": last, "config": asdict(config)}, ckpt)

    net.train()
    targets, current, start = None, None, time.perf_counter()
    warmup = max(1, min(500, config.iterations // 20))
    bar = tqdm(total=config.iterations, initial=step, desc="intervi", disable=not progress, unit="upd")
    while step < config.iterations and not plateau.stopped_at:  # a resumed run that stopped stays stopped
        offset, idx = batch_at(step, batches, config.updates_per_batch, seed)
        if current != (offset, idx):
            targets, current = _targets(flows, frames_t, known_t, offset, idx), (offset, idx)
        out = _forward(net, noise[idx], h, w, amp)
        k = offsets.index(offset)
        terms = intervi_losses(
            out["image"], out["flow"][:, 2 * k : 2 * k + 2], targets,
            w_image=config.w_image, w_flow=config.w_flow, w_consistency=config.w_consistency,
            w_perceptual=config.w_perceptual, vgg=vgg,
        )  # fmt: skip
        optim.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if config.lr_schedule != "constant":
            for group in optim.param_groups:
                group["lr"] = config.lr * lr_factor(config.lr_schedule, step, config.iterations, warmup) * plateau.scale
        optim.step()
        step += 1
        bar.update(1)
        if step % config.updates_per_batch == 0 or step == config.iterations:
            last = {f"train/{name}": float(v.detach()) for name, v in terms.items()}
            bar.set_postfix(loss=f"{last['train/loss']:.4g}")
        stop = False
        if plateau.due(step):
            pred = _generate(net, noise, h, w, config.batch_frames, amp)
            point = {"iteration": float(step), "seconds": time.perf_counter() - start,
                     "selfval/psnr": holdout_psnr(pred, frames, holdout)}  # fmt: skip
            stop = plateau.update(step, record_point(history, point, lambda: pred, masks)["selfval/psnr"])
        if step % config.checkpoint_every == 0 or step == config.iterations or stop:
            save()
        if stop:
            break
    bar.close()

    pred = _generate(net, noise, h, w, config.batch_frames, amp)
    known_err = ((pred.astype(np.float64) - frames) ** 2)[~unseen]
    mse = float(known_err.mean()) if known_err.size else math.nan
    metrics = {**last, "train/updates": float(step)}
    metrics["train/psnr_known"] = math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
    if config.holdout > 0:
        metrics["selfval/psnr"] = holdout_psnr(pred, frames, holdout)
    record = {"perceptual": perceptual, "device_used": str(device), "amp_used": amp}
    return Fill(pred, metrics=metrics, record=record, history=history)


@torch.no_grad()
def _generate(net: SkipNet, noise: torch.Tensor, h: int, w: int, chunk: int, amp: bool) -> np.ndarray:
    """Every frame from its noise map, in consecutive chunks of ``chunk`` frames.

    Kept in train mode: BatchNorm normalises with batch statistics exactly as during training
    (Deep Image Prior practice); running averages would be a different network.
    """
    net.train()
    images = [_forward(net, noise[s : s + chunk], h, w, amp)["image"] for s in range(0, noise.shape[0], chunk)]
    video = torch.cat(images).clamp(0, 1).mul(255).round().to(torch.uint8)
    return rearrange(video, "t c h w -> t h w c").cpu().numpy()


INTERVI = Method("intervi", InterVIConfig, fit_intervi, "InterVI (Zhang et al. 2019): internal learning of appearance and flow")
