"""ViLocal's light decoder: per-pixel MLP on encoder features, then bilinear upsampling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LightDecoder(nn.Module):
    """1×1 conv -> BatchNorm -> ReLU -> 1×1 conv -> bilinear upsample (align_corners=True).

    ``forward(features: [B, C, h, w], out_size: (H, W)) -> logits [B, 1, H, W]``; apply a sigmoid
    for probabilities (the losses take logits).
    """

    def __init__(self, in_dim: int = 256, hidden: int = 128) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, hidden, 1)
        self.norm = nn.BatchNorm2d(hidden)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(hidden, 1, 1)

    def forward(self, features: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        logits = self.head(self.act(self.norm(self.proj(features))))
        return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=True)
