"""IIVIConfig: every option of one IIVI fit, flat scalars (a Tune space and MLflow params take it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vilocal_dist.inpaint.base import MethodConfig, build_config
from vilocal_dist.inpaint.iivi.generator import PRESETS
from vilocal_dist.inpaint.stopping import LR_SCHEDULES, StopRule
from vilocal_dist.inpaint.vgg import layer_names


@dataclass(frozen=True)
class IIVIConfig(MethodConfig):
    """Defaults follow the paper (appendix A.2/A.3) except where noted."""

    preset: str = "paper"  # generator size: 'paper' (base width 48) or 'tiny' (tests, CPU demos)
    iters_recon: int = 60_000  # phase 1 (reconstruction loss only): its maximum length
    iters_reg: int = 20_000  # phase 2 (+ λ_a·L_amb + λ_s·L_stab): its maximum length
    lr: float = 2e-4  # Adam
    lr_schedule: str = "constant"  # 'constant' (paper) or 'cosine': warm-up, then decay over the maximum
    # Stopping rule (inpaint/stopping.py): each phase ends once selfval/psnr has not improved by
    # more than stop_min_delta dB over stop_patience evaluations made every stop_every iterations,
    # after at least min_iters. Needs holdout > 0; stop_every = 0 runs the fixed maxima above.
    stop_every: int = 500
    stop_patience: int = 6
    stop_min_delta: float = 0.05
    min_iters: int = 2000
    batch: int = 5  # frames per step (authors' code)
    lambda_a: float = 0.1  # anti-ambiguity weight
    lambda_s: float = 0.2  # stabilisation weight
    vgg_layer: str = "relu3_4"  # VGG-19 layer of L_amb (paper; the authors' code uses conv4_2)
    vgg_weights: str | None = None  # torchvision-layout VGG-19 state dict; None: $VILOCAL_VGG19_WEIGHTS
    random_vgg: bool = False  # opt in to a fixed-seed random VGG-19 when no weights exist
    size_h: int = 0  # working resolution (authors' code: 320×600); 0 = native
    size_w: int = 0
    dilate: int = 12  # square kernel dilating the holes (authors' code: 12 at 320 rows); 0 = off
    dilate_ref_rows: int = 320  # the kernel is round(dilate·rows/dilate_ref_rows), ≥ 1; 0 = unscaled
    holdout: float = 0.05  # fraction of known pixels held out for self-validation; 0 = paper-exact
    boundary_aware: bool = False  # paper's boundary-aware translation sampling (absent in their code)
    ckpt_every: int = 1000  # iterations between checkpoints in workdir
    recon_cache: str = ""  # folder keeping the end of phase 1 for fits that differ only in phase 2 ("" = off)
    device: str = "auto"  # 'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:N'
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    recompute: bool = False  # activation checkpointing: ~4× less activation memory, ~⅓ more compute

    def problems(self) -> list[str]:
        problems = []
        if self.preset not in PRESETS:
            problems.append(f"preset {self.preset!r} not in {sorted(PRESETS)}")
        if self.iters_recon < 0 or self.iters_reg < 0 or self.iters_recon + self.iters_reg < 1:
            problems.append("iters_recon, iters_reg must be ≥ 0 with at least one iteration in all")
        if self.batch < 1 or self.lr <= 0 or self.ckpt_every < 1:
            problems.append("batch, lr and ckpt_every must be positive")
        if self.lambda_a < 0 or self.lambda_s < 0:
            problems.append("lambda_a, lambda_s must be ≥ 0")
        if self.vgg_layer not in layer_names("vgg19"):
            problems.append(f"vgg_layer {self.vgg_layer!r} is not a VGG-19 layer")
        if (self.size_h == 0) != (self.size_w == 0) or self.size_h < 0 or self.size_w < 0:
            problems.append("size_h and size_w must both be 0 (native) or both positive")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule {self.lr_schedule!r} not in {LR_SCHEDULES}")
        if min(self.stop_every, self.stop_patience, self.min_iters, self.dilate_ref_rows) < 0 or self.stop_min_delta < 0:
            problems.append("stop_every, stop_patience, stop_min_delta, min_iters and dilate_ref_rows must be ≥ 0")
        if self.dilate < 0 or not 0 <= self.holdout < 0.5:
            problems.append("dilate must be ≥ 0 and holdout in [0, 0.5)")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            problems.append(f"device {self.device!r} is not auto, cpu, cuda or cuda:N")
        return problems

    @property
    def total_iters(self) -> int:
        return self.iters_recon + self.iters_reg

    def stop_rule(self, max_iters: int) -> StopRule:
        """The stopping rule of a phase of at most ``max_iters`` iterations (off without a holdout)."""
        every = self.stop_every if self.holdout > 0 else 0
        return StopRule(every, self.stop_patience, self.stop_min_delta, self.min_iters, max_iters)

    @property
    def needs_vgg(self) -> bool:
        return self.iters_reg > 0 and self.lambda_a > 0

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | None) -> IIVIConfig:
        """Build from a plain dict (YAML, Tune, CLI); unknown keys and wrong types are ConfigErrors."""
        return build_config(cls, cfg, "iivi")
