"""InterVI's four losses (paper §3.1), all masked MSE averaged over the batch's frames.

* image      ``‖M_i ⊙ (Î_i − I_i)‖²``                    known pixels
* flow       ``‖O_ij ⊙ M^f_ij ⊙ (F̂_ij − F_ij)‖²``         reliable known flow
* consistency ``‖(1 − M^f_ij) ⊙ (Î_j(F̂_ij) − Î_i)‖²``   where the reference flow cannot supervise
  (the hole, or landing in j's hole): frame j's prediction, backward-warped by the predicted flow,
  must match frame i's prediction — this is what carries content into the hole across frames
* perceptual ``Σ_k ‖ψ_k(M_i) ⊙ (φ_k(Î_i) − φ_k(I_i))‖²`` over VGG-16 relu1_2 / relu2_2 / relu3_3

Masks here are float (B,1,H,W), 1 = the term applies. Every term is a mean over all elements of
the batch, so a frame the term does not apply to counts as zero rather than being dropped.

Flows are predicted and supervised in normalised units (grid_sample's: the frame spans [-1, 1],
so ``dx_norm = dx_px · 2 / (W − 1)``). In pixels the flow term's scale grows with the motion
(tens of px² at offset 5) and dwarfs the image term: the network then stops fitting the frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

#: VGG-16 layers of the perceptual loss (paper §3.1).
PERCEPTUAL_LAYERS = ("relu1_2", "relu2_2", "relu3_3")


@dataclass
class BatchTargets:
    """What one curriculum batch is supervised with; all tensors on the training device.

    frames: (B,3,H,W) in [0,1]; known: (B,1,H,W), 1 = known pixel; ref_flow: (B,2,H,W) reference
    flow i -> i+offset in normalised units; reliable: (B,1,H,W) reliable known flow O ⊙ M^f; known_flow:
    (B,1,H,W) M^f; partner: (B,) long, batch index of frame i+offset or -1 when not in the batch.
    """

    frames: torch.Tensor
    known: torch.Tensor
    ref_flow: torch.Tensor
    reliable: torch.Tensor
    known_flow: torch.Tensor
    partner: torch.Tensor


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean((mask ⊙ (pred − target))²)`` with ``mask`` broadcast over channels."""
    return ((pred - target) * mask).pow(2).mean()


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``image`` (B,C,H,W) at ``x + flow(x)`` (flow (B,2,H,W), pixels, (dx, dy)).

    Returns (warped (B,C,H,W), inside (B,1,H,W) float: 1 where the sample point is in the frame).
    """
    _, _, h, w = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, device=image.device, dtype=flow.dtype),
        torch.arange(w, device=image.device, dtype=flow.dtype),
        indexing="ij",
    )
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    # grid_sample wants (x, y) normalised to [-1, 1] with align_corners=True: -1 = first pixel centre.
    grid = torch.stack([2 * x / max(w - 1, 1) - 1, 2 * y / max(h - 1, 1) - 1], dim=-1)
    warped = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    inside = ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).to(image.dtype)
    return warped, rearrange(inside, "b h w -> b 1 h w")


def flow_scale(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """(1,2,1,1) pixels per normalised unit for (dx, dy): ``flow_px = flow_norm · flow_scale``."""
    return torch.tensor([(w - 1) / 2, (h - 1) / 2], device=device).clamp(min=0.5).view(1, 2, 1, 1)


def consistency_loss(image: torch.Tensor, flow: torch.Tensor, targets: BatchTargets) -> torch.Tensor:
    """Image–flow consistency for frames whose partner i+offset is in the batch (zero otherwise).

    flow: (B,2,H,W) predicted flow i -> i+offset, normalised units.
    """
    has_partner = targets.partner >= 0
    if not bool(has_partner.any()):
        return image.sum() * 0.0
    idx = torch.nonzero(has_partner).squeeze(1)
    pixels = flow[idx] * flow_scale(*image.shape[-2:], device=flow.device)
    warped, inside = backward_warp(image[targets.partner[idx]], pixels)
    region = (1.0 - targets.known_flow[idx]) * inside.detach()
    per_sel = ((warped - image[idx]) * region).pow(2).sum()
    return per_sel / image.numel()


def perceptual_loss(vgg: nn.Module, image: torch.Tensor, targets: BatchTargets) -> torch.Tensor:
    """Masked feature MSE summed over ``vgg``'s layers; the known mask is resized per layer."""
    feats_pred = vgg(image)
    with torch.no_grad():
        feats_true = vgg(targets.frames)
    total = image.new_zeros(())
    for name, fp in feats_pred.items():
        mask = F.interpolate(targets.known, size=fp.shape[-2:], mode="nearest")
        total = total + masked_mse(fp, feats_true[name], mask)
    return total


def intervi_losses(
    image: torch.Tensor,
    flow: torch.Tensor,
    targets: BatchTargets,
    *,
    w_image: float,
    w_flow: float,
    w_consistency: float,
    w_perceptual: float,
    vgg: nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """All terms for one batch: image (B,3,H,W) in [0,1], flow (B,2,H,W) for the batch's offset
    (normalised units).

    Returns ``{'loss', 'image', 'flow', 'consistency', 'perceptual'}`` (unweighted terms + total).
    """
    terms = {
        "image": masked_mse(image, targets.frames, targets.known),
        "flow": masked_mse(flow, targets.ref_flow, targets.reliable),
        "consistency": consistency_loss(image, flow, targets),
        "perceptual": perceptual_loss(vgg, image, targets) if vgg is not None else image.new_zeros(()),
    }
    weights = {"image": w_image, "flow": w_flow, "consistency": w_consistency, "perceptual": w_perceptual}
    terms["loss"] = sum(weights[k] * terms[k] for k in weights)
    return terms
