"""InterVI's configuration: one frozen dataclass of flat scalars, plus named presets.

Defaults reproduce the paper (Zhang et al. 2019, "An Internal Learning Approach to Video
Inpainting", appendix A–C): 6 scales of widths 16–128, 5×5 encoder / 3×3 decoder convs, 4-channel
skips, flows to i±1, i±3, i±5, batches of 5 frames, 100 updates per batch, Adam lr 1e-2, loss
weights 1 / 0.1 / 1 / 0.01. ``preset="tiny"`` is a small network and short schedule for tests and
CPU demos — its results are not the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from vilocal_dist.inpaint.base import MethodConfig, build_config
from vilocal_dist.inpaint.flow import DIS_PRESETS
from vilocal_dist.inpaint.stopping import LR_SCHEDULES, StopRule

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": dict(
        scales=3, width_min=8, width_max=16, updates_per_batch=5, iterations=40, checkpoint_every=20, dis_preset="fast",
        stop_every=20, min_iters=20
    ),
}


@dataclass(frozen=True)
class InterVIConfig(MethodConfig):
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = PRESETS
    preset: str = "paper"  # base values: "paper" or "tiny"; explicit keys override the preset
    # network (Deep Image Prior skip encoder-decoder)
    scales: int = 6  # encoder blocks, each halving the resolution
    width_min: int = 16  # channels at the finest scale; doubled per scale up to width_max
    width_max: int = 128
    enc_kernel: int = 5
    dec_kernel: int = 3
    skip_channels: int = 4
    noise_scale: float = 0.1  # input noise ~ U(0, noise_scale), one channel, fixed per frame
    # flow
    offsets: str = "1,3,5"  # frame distances t; flows to i+t and i-t are predicted for each
    dis_preset: str = "medium"  # OpenCV DIS preset for the reference flow (PWC-Net in the paper)
    fb_alpha: float = 0.01  # forward–backward check: |f+b|² < alpha(|f|²+|b|²) + beta
    fb_beta: float = 0.5
    # curriculum and optimiser
    batch_frames: int = 5  # frames per batch, consecutive at stride t
    updates_per_batch: int = 100
    iterations: int = 100_000  # maximum parameter updates (the stopping rule may end sooner)
    lr: float = 1e-2
    lr_schedule: str = "constant"  # 'constant' (paper) or 'cosine' (warm-up, decay over `iterations`)
    # Self-validation and the stopping rule (inpaint/stopping.py): `holdout` of the known pixels are
    # hidden from the losses and the flows; every stop_every updates their PSNR is scored, and the
    # fit stops when it has not improved by > stop_min_delta dB over stop_patience evaluations,
    # after at least min_iters. holdout = 0 (paper-exact) or stop_every = 0: fixed `iterations`.
    holdout: float = 0.05
    stop_every: int = 1000
    stop_patience: int = 6
    stop_min_delta: float = 0.05
    min_iters: int = 5000
    # loss weights (all terms are MSE)
    w_image: float = 1.0
    w_flow: float = 0.1
    w_consistency: float = 1.0
    w_perceptual: float = 0.01
    vgg_weights: str = ""  # local torchvision VGG-16 state dict; "" = $VILOCAL_VGG16_WEIGHTS, else off
    # runtime
    checkpoint_every: int = 1000  # updates between checkpoints in the workdir
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", …
    amp: bool = True  # bf16 autocast for the network on CUDA (ignored on CPU)

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels per scale, finest first (paper: 16, 32, 64, 128, 128, 128)."""
        return tuple(min(self.width_min * 2**k, self.width_max) for k in range(self.scales))

    @property
    def signed_offsets(self) -> tuple[int, ...]:
        """Predicted flow targets relative to i, in flow-head channel order (+t, -t per t)."""
        return tuple(o for t in self.strides for o in (t, -t))

    @property
    def stop_rule(self) -> StopRule:
        """The stopping rule over at most ``iterations`` updates (off without a holdout)."""
        every = self.stop_every if self.holdout > 0 else 0
        return StopRule(every, self.stop_patience, self.stop_min_delta, self.min_iters, self.iterations)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(sorted({int(p) for p in str(self.offsets).split(",") if p.strip()}))

    def problems(self) -> list[str]:
        try:
            strides = self.strides
        except ValueError:
            return [f"offsets must be comma-separated positive integers, got {self.offsets!r}"]
        problems = []
        if not strides or min(strides) < 1:
            problems.append(f"offsets must be comma-separated positive integers, got {self.offsets!r}")
        for name in ("scales", "width_min", "width_max", "enc_kernel", "dec_kernel", "skip_channels"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.enc_kernel % 2 == 0 or self.dec_kernel % 2 == 0:
            problems.append("enc_kernel and dec_kernel must be odd (same-size padding)")
        for name in ("batch_frames", "updates_per_batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.iterations < 0 or self.lr <= 0:
            problems.append("iterations must be >= 0 and lr > 0")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}")
        if min(self.stop_every, self.stop_patience, self.min_iters) < 0 or self.stop_min_delta < 0:
            problems.append("stop_every, stop_patience, stop_min_delta and min_iters must be >= 0")
        if not 0 <= self.holdout < 0.5:
            problems.append("holdout must be in [0, 0.5)")
        if self.dis_preset not in DIS_PRESETS:
            problems.append(f"dis_preset must be one of {sorted(DIS_PRESETS)}")
        return problems


def resolve_config(cfg: dict[str, Any] | None) -> InterVIConfig:
    """cfg dict -> validated config: preset values first, then the explicitly given keys."""
    return build_config(InterVIConfig, cfg, "intervi")
