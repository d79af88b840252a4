"""IIVI's objectives: reconstruction, anti-ambiguity (contextual) and stabilisation losses.

Each takes tensors and returns a scalar; the fit loop weights and logs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from vilocal_dist.inpaint.vgg import VGGFeatures

# Source×target similarity blocks are computed this many elements at a time: the full matrix at
# relu3_4 of a 320×600 frame is 12k×12k floats (≈0.6 GB) per sample, the authors' OOM.
_SIM_BLOCK = 1 << 24


def masked_l1(diff: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean |diff| over kept pixels and all channels; ``diff`` (B, C, H, W), ``keep`` bool (B, 1, H, W)."""
    keep = keep.to(diff.dtype).expand_as(diff)
    return (diff.abs() * keep).sum() / keep.sum().clamp_min(1)


def reconstruction_loss(
    outputs: dict[str, torch.Tensor], target: torch.Tensor, supervised: torch.Tensor
) -> torch.Tensor:
    """Σ over the generator's outputs (coarse and refine) of the L1 error on supervised pixels."""
    return sum(masked_l1(out - target, supervised) for out in outputs.values())


def contextual_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over source feature points of the cosine distance to their nearest target point.

    ``source``, ``target``: (B, C, h, w) features of one source/target image pair per sample. The
    nearest neighbours are searched without gradient, blockwise; the loss is then re-evaluated at
    them, which gives the same value and gradient as ``min`` over the full distance matrix without
    ever holding (or back-propagating through) that matrix.
    """
    src = F.normalize(rearrange(source.float(), "b c h w -> b (h w) c"), dim=-1)
    with torch.no_grad():
        tgt = F.normalize(rearrange(target.float(), "b c h w -> b (h w) c"), dim=-1)
        step = max(1, _SIM_BLOCK // max(1, tgt.shape[1]))
        blocks = [src[:, i : i + step].detach() for i in range(0, src.shape[1], step)]
        nearest = torch.cat([torch.bmm(block, tgt.transpose(1, 2)).argmax(-1) for block in blocks], dim=1)
    matched = torch.gather(tgt, 1, nearest.unsqueeze(-1).expand(-1, -1, tgt.shape[-1]))
    return (1 - (src * matched).sum(-1)).mean()


def ambiguity_loss(
    vgg: VGGFeatures, layer: str, output: torch.Tensor, target_frame: torch.Tensor, target_hole: torch.Tensor
) -> torch.Tensor:
    """Anti-ambiguity term: contextual loss between the output frame and another frame X_t.

    Both images are masked by X_t's hole (zeroed inside it) as in the paper's eq. 3/8, so a region
    that is blocked in the chosen frame contributes nothing. ``output``/``target_frame`` (B, 3, H, W)
    in [0, 1]; ``target_hole`` bool (B, 1, H, W). X_t's features need no gradient.
    """
    keep = (~target_hole).to(output.dtype)
    with torch.no_grad():
        tgt = vgg(target_frame * keep)[layer]
    return contextual_loss(vgg(output * keep)[layer], tgt)


def stabilization_loss(
    f_x: torch.Tensor, f_gx: torch.Tensor, x: torch.Tensor, gx: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Mean |(f(gx) − f(x)) − (g(x) − x)| over ``keep`` (outside M ∪ g(M) and the warp's fill).

    All images (B, 3, H, W); ``keep`` bool (B, 1, H, W). Zero whenever f commutes with g.
    """
    return masked_l1((f_gx - f_x) - (gx - x), keep)
