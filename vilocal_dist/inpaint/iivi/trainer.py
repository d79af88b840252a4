"""One IIVI training step, and the state a checkpoint needs to continue it bit for bit."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from vilocal_dist.inpaint.iivi.augment import (
    MaskAugmenter,
    apply_g_image,
    apply_g_mask,
    g_valid,
    sample_g,
    training_holes,
)
from vilocal_dist.inpaint.iivi.config import IIVIConfig
from vilocal_dist.inpaint.iivi.generator import IIVIGenerator
from vilocal_dist.inpaint.stopping import lr_factor
from vilocal_dist.inpaint.iivi.losses import ambiguity_loss, reconstruction_loss, stabilization_loss
from vilocal_dist.inpaint.vgg import VGGFeatures, load_vgg_features

RANDOM_VGG_SEED = 0
_EMA = 0.98  # smoothing of the logged losses
# g blurs (≤5×5, radius 2) after a bilinear warp (radius 1): unseen pixels bleed ≤3 px into g(x),
# so the unseen region is grown by that much wherever g(x) is fed to or compared with the network.
_BLEED = 7


@dataclass(frozen=True)
class VideoTensors:
    """A video at working resolution: frames (T, 3, h, w) in [0, 1]; holes, holdout bool (T, 1, h, w)."""

    frames: torch.Tensor
    holes: torch.Tensor  # the (dilated) regions to fill
    holdout: torch.Tensor  # known pixels kept unseen for self-validation

    @classmethod
    def from_numpy(
        cls, frames: np.ndarray, holes: np.ndarray, holdout: np.ndarray, device: torch.device
    ) -> VideoTensors:
        return cls(
            frames=rearrange(torch.from_numpy(frames).to(device), "t h w c -> t c h w").float() / 255,
            holes=rearrange(torch.from_numpy(holes).to(device), "t h w -> t 1 h w"),
            holdout=rearrange(torch.from_numpy(holdout).to(device), "t h w -> t 1 h w"),
        )


def build_vgg(cfg: IIVIConfig, device: torch.device) -> VGGFeatures | None:
    """The shared frozen VGG-19 for L_amb, or None when the schedule never uses it."""
    if not cfg.needs_vgg:
        return None
    seed = RANDOM_VGG_SEED if cfg.random_vgg else None
    return load_vgg_features("vgg19", weights=cfg.vgg_weights, random_seed=seed, layers=(cfg.vgg_layer,), device=device)


class IIVITrainer:
    """Owns the generator, Adam, the numpy RNG that draws every augmentation, and the iteration."""

    def __init__(self, video: VideoTensors, cfg: IIVIConfig, *, seed: int, device: torch.device) -> None:
        self.video, self.cfg, self.device = video, cfg, device
        self.vgg = build_vgg(cfg, device)  # first, so a missing-weights error comes before any work
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = IIVIGenerator(cfg.preset, recompute=cfg.recompute).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.rng = np.random.default_rng(seed)
        self.augmenter = MaskAugmenter(video.holes[:, 0].cpu().numpy(), boundary_aware=cfg.boundary_aware)
        self.iteration = 0
        self.lr_scale = 1.0  # set by the fit from its Plateau under the 'plateau' schedule
        self.recon_end = cfg.iters_recon  # moved earlier when the stopping rule ends phase 1
        self.logs: dict[str, float] = {}

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self) -> dict[str, float]:
        """One optimisation step; returns this step's loss terms.

        With the stabilisation term on, backward runs in two passes so that only one generator
        graph (f(x) or f(gx)) is alive at a time: L_stab = mean|f(gx) − f(x) − (gx − x)| has gradient
        −sign(Δ) through f(x) and +sign(Δ) through f(gx), so the first pass uses a no-grad f(gx) and
        the second a detached f(x). Same gradient as the joint loss, for one extra no-grad forward.
        """
        cfg, v = self.cfg, self.video
        t_count = v.frames.shape[0]
        regularise = self.iteration >= self.recon_end
        idx = self.rng.choice(t_count, size=cfg.batch, replace=t_count < cfg.batch)
        augmented = MaskAugmenter.apply(v.holes, self.augmenter.sample(self.rng, idx))
        idx_t = torch.from_numpy(idx).to(self.device)
        x, own, holdout = v.frames[idx_t], v.holes[idx_t], v.holdout[idx_t]
        hole, supervised = training_holes(own, augmented, holdout)
        terms: dict[str, torch.Tensor] = {}
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.model(x, hole)
            terms["rec"] = reconstruction_loss(out, x, supervised)
            loss = terms["rec"]
            if regularise and cfg.lambda_a > 0:
                terms["amb"] = self._ambiguity(out["refine"])
                loss = loss + cfg.lambda_a * terms["amb"]
            stab = self._stabilisation_input(x, hole, ~supervised) if regularise and cfg.lambda_s > 0 else None
            if stab is not None:
                gx, g_hole, keep = stab
                with torch.no_grad():
                    f_gx = self.model(gx, g_hole)["refine"]
                terms["stab"] = stabilization_loss(out["refine"], f_gx, x, gx, keep)
                loss = loss + cfg.lambda_s * terms["stab"]
        loss.backward()  # frees the f(x) graph
        if stab is not None:
            with self._autocast():
                f_x = out["refine"].detach()
                second = stabilization_loss(f_x, self.model(gx, g_hole)["refine"], x, gx, keep)
            (cfg.lambda_s * second).backward()
        if cfg.lr_schedule != "constant":
            warmup = max(1, min(500, cfg.total_iters // 20))
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg.lr_schedule, self.iteration, cfg.total_iters, warmup) * self.lr_scale
        self.opt.step()
        self.iteration += 1
        values = {k: float(t.detach()) for k, t in terms.items()} | {"loss": float(loss.detach())}
        for k, val in values.items():
            self.logs[k] = val if k not in self.logs else _EMA * self.logs[k] + (1 - _EMA) * val
        return values

    def _ambiguity(self, output: torch.Tensor) -> torch.Tensor:
        # Target X_t: another random frame, with its hole and held-out pixels blanked (both unseen).
        v = self.video
        t = torch.from_numpy(self.rng.integers(v.frames.shape[0], size=output.shape[0])).to(self.device)
        assert self.vgg is not None
        return ambiguity_loss(self.vgg, self.cfg.vgg_layer, output, v.frames[t], v.holes[t] | v.holdout[t])

    def _stabilisation_input(
        self, x: torch.Tensor, hole: torch.Tensor, unseen: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw g; return g(x), the network's hole for it, and where L_stab is evaluated."""
        g = sample_g(self.rng, x.shape[0], x.shape[-2], x.shape[-1], self.device)
        gx = apply_g_image(x, g)
        g_hole = _grow(apply_g_mask(hole, g))
        keep = ~_grow(unseen | apply_g_mask(unseen, g)) & g_valid(x, g)
        return gx, g_hole, keep

    @torch.no_grad()
    def predict(self, *, hide_holdout: bool, chunk: int = 8) -> np.ndarray:
        """Refined frames ``T×h×w×3`` float in [0, 1]. ``hide_holdout``: the held-out pixels are input
        holes too (to score self-validation); the final fill sees every known pixel instead."""
        v, outs = self.video, []
        for i in range(0, v.frames.shape[0], chunk):
            hole = v.holes[i : i + chunk] | v.holdout[i : i + chunk] if hide_holdout else v.holes[i : i + chunk]
            with self._autocast():
                out = self.model(v.frames[i : i + chunk], hole)
            outs.append(out["refine"].float())
        return rearrange(torch.cat(outs), "t c h w -> t h w c").clamp(0, 1).cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "iteration": self.iteration,
            "recon_end": self.recon_end,
            "rng": self.rng.bit_generator.state,
            "logs": dict(self.logs),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.recon_end = int(state.get("recon_end", self.cfg.iters_recon))
        self.rng.bit_generator.state = state["rng"]
        self.logs = dict(state["logs"])


def _grow(mask: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(mask.float(), _BLEED, stride=1, padding=_BLEED // 2) > 0
