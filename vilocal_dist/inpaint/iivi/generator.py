"""IIVI's coarse-to-fine gated-convolution generator (paper appendix A.1).

Blocks: ``C[c, k, s, d]`` = reflection pad, conv to ``c`` channels, split in two halves
``ELU(a) · sigmoid(b)`` (so the block outputs ``c/2`` channels: the nominal width is twice the
effective one, as in DeepFill v2); ``D`` = bilinear ×2 upsample then ``C``; ``O`` = conv to RGB, tanh.
With base width ``w`` (paper: 48) the widths 48/96/192/24 become w/2w/4w/w÷2.

Coarse net (the paper's base network): C(w,5) C(2w,3,s2) C(2w) C(4w,3,s2) C(4w) C(4w)
C(4w,d=r) for each dilation rate r C(4w) C(4w) D(2w) C(2w) D(w) C(w/2) O.
Refine net: the same dilated trunk on the first pass's composite, plus a plain branch
C(w,5) C(2w,s2) C(2w) C(4w,s2) C(4w) C(4w) C(4w,d2) C(4w) C(4w); the two are concatenated and
decoded by the same head. Both outputs are returned because both are supervised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vilocal_dist.errors import ConfigError


@dataclass(frozen=True)
class GeneratorPreset:
    width: int  # nominal base width (paper: 48)
    dilations: tuple[int, ...]  # rates of the dilated convs in the trunk


PRESETS: dict[str, GeneratorPreset] = {
    "paper": GeneratorPreset(width=48, dilations=(2, 4, 8, 16)),
    # For tests and CPU demos at ~64×96: at H/4 = 16 rows a rate of 16 would only see padding.
    "tiny": GeneratorPreset(width=8, dilations=(2, 4, 8)),
}

_MULTIPLE = 4  # two stride-2 convs: inputs are padded to a multiple of 4 and cropped back


def preset(name: str) -> GeneratorPreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown IIVI generator preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]


def _pad(x: torch.Tensor, p: int) -> torch.Tensor:
    # Reflection (paper) needs p < size; tiny test inputs at large dilation fall back to replicate.
    if p == 0:
        return x
    mode = "reflect" if p < min(x.shape[-2:]) else "replicate"
    return F.pad(x, (p, p, p, p), mode=mode)


class GatedConv(nn.Module):
    """``C[out_c, k, s, d]``: conv to ``out_c`` channels, output ``ELU(a)·σ(b)`` with ``out_c/2`` channels."""

    def __init__(self, in_c: int, out_c: int, k: int = 3, s: int = 1, d: int = 1) -> None:
        super().__init__()
        if out_c % 2:
            raise ConfigError(f"gated conv width must be even, got {out_c}")
        self.pad = d * (k - 1) // 2
        self.conv = nn.Conv2d(in_c, out_c, k, stride=s, dilation=d)
        self.out_channels = out_c // 2
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # ELU(a)·σ(b) with σ(b) ≈ ½ keeps roughly 1/6–1/8 of a's second moment, so the feature half
        # gets variance 6/fan_in (He ×3): the signal then keeps its scale through the 17 layers, while
        # PyTorch's default init shrinks it ~10× by the bottleneck and trains several times slower.
        fan_in = self.conv.weight[0].numel()
        half = self.out_channels
        with torch.no_grad():
            self.conv.weight[:half].normal_(0, (6 / fan_in) ** 0.5)
            self.conv.weight[half:].normal_(0, (1 / fan_in) ** 0.5)
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat, gate = self.conv(_pad(x, self.pad)).chunk(2, dim=1)
        return F.elu(feat) * torch.sigmoid(gate)


class GatedDeconv(nn.Module):
    """``D[out_c, k]``: bilinear ×2 upsample then a gated conv."""

    def __init__(self, in_c: int, out_c: int, k: int = 3) -> None:
        super().__init__()
        self.conv = GatedConv(in_c, out_c, k)
        self.out_channels = self.conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


def _chain(in_c: int, specs: list[tuple[str, int, int, int, int]]) -> tuple[nn.Sequential, int]:
    """Build ``[(kind, out_c, k, s, d)]`` into a Sequential; returns it and its output channels."""
    layers: list[nn.Module] = []
    for kind, out_c, k, s, d in specs:
        layer = GatedConv(in_c, out_c, k, s, d) if kind == "C" else GatedDeconv(in_c, out_c, k)
        layers.append(layer)
        in_c = layer.out_channels
    return nn.Sequential(*layers), in_c


def _encoder_specs(w: int) -> list[tuple[str, int, int, int, int]]:
    return [("C", w, 5, 1, 1), ("C", 2 * w, 3, 2, 1), ("C", 2 * w, 3, 1, 1), ("C", 4 * w, 3, 2, 1),
            ("C", 4 * w, 3, 1, 1), ("C", 4 * w, 3, 1, 1)]  # fmt: skip


def _decoder_specs(w: int) -> list[tuple[str, int, int, int, int]]:
    return [("C", 4 * w, 3, 1, 1), ("C", 4 * w, 3, 1, 1), ("D", 2 * w, 3, 1, 1), ("C", 2 * w, 3, 1, 1),
            ("D", w, 3, 1, 1), ("C", w // 2, 3, 1, 1)]  # fmt: skip


def _run(chain: nn.Sequential, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    """``chain(x)``; with ``recompute`` only each layer's input is kept for backward and the layer is
    re-run there (activation checkpointing): ~4× less activation memory for ~⅓ more compute."""
    if not (recompute and torch.is_grad_enabled()):
        return chain(x)
    for layer in chain:
        x = checkpoint(layer, x, use_reentrant=False)
    return x


class Stage(nn.Module):
    """One pass: masked frame + mask → RGB in [-1, 1]. ``plain_branch`` adds the refine net's branch."""

    def __init__(self, p: GeneratorPreset, *, plain_branch: bool, recompute: bool = False) -> None:
        super().__init__()
        self.recompute = recompute
        w = p.width
        trunk = _encoder_specs(w) + [("C", 4 * w, 3, 1, r) for r in p.dilations]
        self.trunk, trunk_c = _chain(4, trunk)
        self.plain = None
        if plain_branch:
            plain = _encoder_specs(w) + [("C", 4 * w, 3, 1, 2), ("C", 4 * w, 3, 1, 1), ("C", 4 * w, 3, 1, 1)]
            self.plain, plain_c = _chain(4, plain)
            trunk_c += plain_c
        self.head, head_c = _chain(trunk_c, _decoder_specs(w))
        self.out = nn.Conv2d(head_c, 3, 1)  # O = C[3, 1, 1, 1] without gating, then tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = _run(self.trunk, x, self.recompute)
        if self.plain is not None:
            feats = torch.cat([feats, _run(self.plain, x, self.recompute)], dim=1)
        return torch.tanh(self.out(_run(self.head, feats, self.recompute)))


class IIVIGenerator(nn.Module):
    """``forward(frames (B,3,H,W) in [0,1], holes (B,1,H,W) bool/float) -> {'coarse', 'refine'}``.

    Both outputs are ``(B, 3, H, W)`` in [0, 1]. Any H, W works: inputs are reflect-padded to a
    multiple of 4 and the outputs cropped back. ``recompute`` trades compute for activation memory
    (same results).
    """

    def __init__(self, preset_name: str = "paper", *, recompute: bool = False) -> None:
        super().__init__()
        p = preset(preset_name)
        if p.width % 4:
            raise ConfigError(f"IIVI base width must be a multiple of 4 (it is halved twice), got {p.width}")
        self.coarse = Stage(p, plain_branch=False, recompute=recompute)
        self.refine = Stage(p, plain_branch=True, recompute=recompute)

    def forward(self, frames: torch.Tensor, holes: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = frames.shape[-2:]
        ph, pw = -h % _MULTIPLE, -w % _MULTIPLE
        holes = holes.to(frames.dtype)
        x = frames * 2 - 1  # the authors' [-1, 1] range: a hole (0) is then mid-grey, not black
        if ph or pw:
            mode = "reflect" if max(ph, pw) < min(h, w) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
            holes = F.pad(holes, (0, pw, 0, ph), mode=mode)
        known = 1 - holes
        coarse = self.coarse(torch.cat([x * known, holes], dim=1))
        mixed = coarse * holes + x * known
        refine = self.refine(torch.cat([mixed, holes], dim=1))
        return {"coarse": (coarse[..., :h, :w] + 1) / 2, "refine": (refine[..., :h, :w] + 1) / 2}
