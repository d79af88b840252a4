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

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": dict(
        scales=3, width_min=8, width_max=16, updates_per_batch=5, iterations=40, checkpoint_every=20, dis_preset="fast"
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
    iterations: int = 100_000  # total parameter updates
    lr: float = 1e-2
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
        if self.dis_preset not in DIS_PRESETS:
            problems.append(f"dis_preset must be one of {sorted(DIS_PRESETS)}")
        return problems


def resolve_config(cfg: dict[str, Any] | None) -> InterVIConfig:
    """cfg dict -> validated config: preset values first, then the explicitly given keys."""
    return build_config(InterVIConfig, cfg, "intervi")
