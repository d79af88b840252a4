"""ViLocal stage 2: focal loss on decoder logits (Lin et al., 2017).

    loss = mean( α_t · (1 − p_t)^γ · BCE(logit, target) ),   p = sigmoid(logit)
    p_t = p·t + (1 − p)(1 − t),   α_t = α·t + (1 − α)(1 − t)

α weighs the inpainted class (target 1), 1 − α the pristine class; γ down-weights easy pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vilocal_dist.errors import ConfigError


def _validate(alpha: float, gamma: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"focal alpha must be in [0, 1], got {alpha}")
    if not gamma >= 0.0:
        raise ConfigError(f"focal gamma must be >= 0, got {gamma}")


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.5, gamma: float = 2.0
) -> dict[str, torch.Tensor]:
    """Mean focal loss. logits: ``[B, 1, H, W]`` (or any shape); targets: same number of elements,
    bool or float in [0, 1] (True/1 = inpainted). Returns ``{"loss": scalar}``.

    α and γ are not checked here, once per step: `FocalLoss` and the training config check them
    once where they enter.
    """
    if logits.numel() != targets.numel():
        raise ValueError(f"logits {list(logits.shape)} and targets {list(targets.shape)} differ")
    # fp32 even under bf16 autocast: (1 − p_t)^γ of confident pixels underflows in bf16.
    x = logits.float()
    t = targets.reshape(logits.shape).to(x.dtype)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")  # stable log-sigmoid form
    # 1 − p_t written with sigmoid(±x) rather than 1 − sigmoid(x): no cancellation when p ≈ 1.
    one_minus_pt = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t
    if gamma == 0.0:
        modulation = torch.ones_like(one_minus_pt)
    else:
        # The floor keeps the gradient of u^γ finite at u = 0 when γ < 1.
        modulation = one_minus_pt.clamp_min(torch.finfo(x.dtype).tiny) ** gamma
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return {"loss": (alpha_t * modulation * bce).mean()}


class FocalLoss(torch.nn.Module):
    """Module form of `focal_loss` with α and γ fixed (validated here)."""

    def __init__(self, alpha: float = 0.5, gamma: float = 2.0) -> None:
        super().__init__()
        _validate(alpha, gamma)
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}"
