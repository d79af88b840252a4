"""ViLocal stage 1: supervised pixel contrastive loss between pristine and inpainted pixels.

Per sample (as in the authors' code, reference-code.md): label each cell of the feature grid
from the mask (`labels_at`); pristine cells are anchors (and positives), inpainted cells
negatives; sample up to ``max_samples`` of each at random; L2-normalise the embeddings. For
anchor ``a_i``:

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
#: How a feature-grid cell (4×4 pixels for ViLocal) gets its label: "centre" = the pixel at the
#: cell's centre (the authors' nearest resize; PyTorch's plain "nearest" would take the top-left
#: one), "ignore_mixed" = forged if every pixel of the cell is, pristine if none is, else left out.
#: "centre" is the default: it is the authors' choice, and "ignore_mixed" did not measure better
#: (a small ablation, full and finetune, two seeds: test F1 within 0.02 of centre's, less than the
#: spread between seeds; the README's ablation section has the command and the figures).
LABEL_MODES = ("centre", "ignore_mixed")
#: The label of a cell left out of the loss.
IGNORED = -1


def _validate(temperature: float, max_samples: int, label_mode: str) -> None:
    if not temperature > 0:
        raise ConfigError(f"contrastive temperature τ must be > 0, got {temperature}")
    if max_samples < 2:
        raise ConfigError(f"max_samples must be >= 2, got {max_samples}")
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"contrastive label mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")


def labels_at(masks: torch.Tensor, size: tuple[int, int], mode: str = "centre") -> torch.Tensor:
    """Masks ``[B, H, W]`` or ``[B, 1, H, W]`` (True/1 = inpainted) -> int8 ``[B, h, w]`` cell labels:
    1 inpainted, 0 pristine, ``IGNORED`` (only with ``mode="ignore_mixed"``) a cell with both.

    "centre" picks pixel ``floor((i + 0.5) · H / h)`` of row cell ``i`` (and likewise for columns):
    for 4-pixel cells, pixel 2 of 0..3, the lower-right one of the four central pixels."""
    if masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks must be [B, H, W] or [B, 1, H, W], got {list(masks.shape)}")
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must be [B, H, W] or [B, 1, H, W], got {list(masks.shape)}")
    forged = (masks[:, None].float() > 0.5).float()  # [B, 1, H, W]
    if mode == "centre":
        return F.interpolate(forged, size=tuple(size), mode="nearest-exact")[:, 0].to(torch.int8)
    if mode != "ignore_mixed":
        raise ValueError(f"mode must be one of {', '.join(LABEL_MODES)}, got {mode!r}")
    # The share of forged pixels per cell is exactly 0 or 1 only in pure cells (sums of 0/1 values).
    share = F.adaptive_avg_pool2d(forged, tuple(size))[:, 0]
    labels = torch.full(share.shape, IGNORED, dtype=torch.int8, device=share.device)
    labels[share == 0] = 0
    labels[share == 1] = 1
    return labels


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
    label_mode: str = "centre",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor | int]:
    """Supervised pixel contrastive loss.

    features: ``[B, C, h, w]`` encoder output; masks: ``[B, H, W]`` or ``[B, 1, H, W]``, True/1 =
    inpainted; ``label_mode`` one of ``LABEL_MODES``. ``generator`` makes the anchor/negative
    sampling reproducible.

    Returns ``loss`` (scalar with grad), ``n_valid`` (int: samples that contributed), ``pos_sim``
    and ``neg_sim`` (mean positive logit and mean anchor–negative cosine over the valid samples,
    detached; 0 when no sample is valid). τ and the sample cap are checked once where they enter
    (`PixelContrastiveLoss`, the training config), not here on every step.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B, C, h, w], got {list(features.shape)}")
    if masks.shape[0] != features.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks for {features.shape[0]} feature maps")
    labels = labels_at(masks.to(features.device), features.shape[-2:], label_mode).flatten(1)  # [B, h*w]
    # Similarities in fp32 even under bf16 autocast: cosines near ±1 divided by τ = 0.1 need it.
    pixels = features.float().flatten(2).transpose(1, 2)  # [B, h*w, C]

    losses, pos_sims, neg_sims = [], [], []
    for emb, cells in zip(pixels, labels):
        anchor_idx = _sample(torch.nonzero(cells == 0).squeeze(1), max_samples, generator)
        negative_idx = _sample(torch.nonzero(cells == 1).squeeze(1), max_samples, generator)
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
    """Module form of `pixel_contrastive_loss` with τ, the sample cap and the label mode fixed
    (validated here)."""

    def __init__(self, temperature: float = 0.1, max_samples: int = DEFAULT_MAX_SAMPLES,
                 label_mode: str = "centre") -> None:
        super().__init__()
        _validate(temperature, max_samples, label_mode)
        self.temperature = temperature
        self.max_samples = max_samples
        self.label_mode = label_mode

    def forward(
        self, features: torch.Tensor, masks: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor | int]:
        return pixel_contrastive_loss(
            features, masks, temperature=self.temperature, max_samples=self.max_samples,
            label_mode=self.label_mode, generator=generator,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, max_samples={self.max_samples}, label_mode={self.label_mode}"
