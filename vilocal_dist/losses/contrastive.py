"""ViLocal stage 1: supervised pixel contrastive loss between pristine and inpainted pixels.

Per sample (as in the authors' code, reference-code.md): resize the mask to the feature size
(nearest); pristine pixels are anchors (and positives), inpainted pixels negatives; sample up to
``max_samples`` of each at random; L2-normalise the embeddings. For anchor ``a_i``:

    pos_i   = mean_{j != i} a_i · a_j          (mean cosine to all OTHER anchors)
    neg_ik  = a_i · n_k                        (cosine to every negative)
    loss_i  = CE([pos_i, neg_i1, ..., neg_iK] / τ, target = 0)

The sample's loss is the mean over its anchors; the batch loss is the mean over samples. Note the
paper's Eq. 1 averages exp(q·k⁺/τ) and leaves the positive out of the denominator; we follow the
code (mean cosine as one logit, positive inside the softmax).

Degenerate frames: a sample with no negatives (nothing inpainted at feature resolution) or fewer
than two anchors (no "other" anchor) contributes no term, and the batch averages over the valid
samples. If none is valid the loss is ``0 · sum(features)``: zero, but with a grad_fn on the
features, so every DDP rank still runs the same backward (the authors' code returns NaN for an
all-forged frame and 0 for an unforged one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vilocal_dist.errors import ConfigError

#: Anchors and negatives sampled per sample (the authors' value).
DEFAULT_MAX_SAMPLES = 3000


def _validate(temperature: float, max_samples: int) -> None:
    if not temperature > 0:
        raise ConfigError(f"contrastive temperature τ must be > 0, got {temperature}")
    if max_samples < 2:
        raise ConfigError(f"max_samples must be >= 2, got {max_samples}")


def labels_at(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks ``[B, H, W]`` or ``[B, 1, H, W]`` (True/1 = inpainted) -> bool ``[B, h, w]``."""
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks must be [B, H, W] or [B, 1, H, W], got {list(masks.shape)}")
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must be [B, H, W] or [B, 1, H, W], got {list(masks.shape)}")
    resized = F.interpolate(masks[:, None].float(), size=tuple(size), mode="nearest")
    return resized[:, 0] > 0.5


def _sample(indices: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    if indices.numel() <= k:
        return indices
    device = generator.device if generator is not None else indices.device
    order = torch.randperm(indices.numel(), generator=generator, device=device)[:k]
    return indices[order.to(indices.device)]


def pixel_contrastive_loss(
    features: torch.Tensor,
    masks: torch.Tensor,
    *,
    temperature: float = 0.1,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor | int]:
    """Supervised pixel contrastive loss.

    features: ``[B, C, h, w]`` encoder output; masks: ``[B, H, W]`` or ``[B, 1, H, W]``, True/1 =
    inpainted. ``generator`` makes the anchor/negative sampling reproducible.

    Returns ``loss`` (scalar with grad), ``n_valid`` (int: samples that contributed), ``pos_sim``
    and ``neg_sim`` (mean positive logit and mean anchor–negative cosine over the valid samples,
    detached; 0 when no sample is valid). τ and the sample cap are checked once where they enter
    (`PixelContrastiveLoss`, the training config), not here on every step.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, h, w], got {list(features.shape)}")
    if masks.shape[0] != features.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks for {features.shape[0]} feature maps")
    labels = labels_at(masks.to(features.device), features.shape[-2:]).flatten(1)  # [B, h*w]
    # Similarities in fp32 even under bf16 autocast: cosines near ±1 divided by τ = 0.1 need it.
    pixels = features.float().flatten(2).transpose(1, 2)  # [B, h*w, C]

    losses, pos_sims, neg_sims = [], [], []
    for emb, forged in zip(pixels, labels):
        anchor_idx = _sample(torch.nonzero(~forged).squeeze(1), max_samples, generator)
        negative_idx = _sample(torch.nonzero(forged).squeeze(1), max_samples, generator)
        if anchor_idx.numel() < 2 or negative_idx.numel() < 1:
            continue
        anchors = F.normalize(emb[anchor_idx], dim=1)  # [A, C]
        negatives = F.normalize(emb[negative_idx], dim=1)  # [K, C]
        # Σ_{j≠i} a_i·a_j = a_i·(Σ_j a_j) − a_i·a_i: O(A·C) instead of an A×A similarity matrix.
        self_sim = (anchors * anchors).sum(dim=1)
        pos = (anchors @ anchors.sum(dim=0) - self_sim) / (anchors.shape[0] - 1)  # [A]
        neg = anchors @ negatives.T  # [A, K]
        logits = torch.cat([pos[:, None], neg], dim=1) / temperature
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        losses.append(F.cross_entropy(logits, target))
        pos_sims.append(pos.detach().mean())
        neg_sims.append(neg.detach().mean())

    if not losses:
        zero = features.new_zeros((), dtype=torch.float32)
        return {
            "loss": features.float().sum() * 0.0,
            "n_valid": 0,
            "pos_sim": zero,
            "neg_sim": zero.clone(),
        }
    return {
        "loss": torch.stack(losses).mean(),
        "n_valid": len(losses),
        "pos_sim": torch.stack(pos_sims).mean(),
        "neg_sim": torch.stack(neg_sims).mean(),
    }


class PixelContrastiveLoss(torch.nn.Module):
    """Module form of `pixel_contrastive_loss` with τ and the sample cap fixed (validated here)."""

    def __init__(self, temperature: float = 0.1, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        super().__init__()
        _validate(temperature, max_samples)
        self.temperature = temperature
        self.max_samples = max_samples

    def forward(
        self, features: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor | int]:
        return pixel_contrastive_loss(
            features, masks, temperature=self.temperature, max_samples=self.max_samples,
            generator=generator,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, max_samples={self.max_samples}"
