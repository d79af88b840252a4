"""Object masks for a whole video from one annotated frame (IIVI paper, section 4.2).

A small segmentation network is trained on the annotated frame alone: each training image is that
frame with a copy of the object pasted at a random place and scale, and the label marks every object
pixel (the original and the copy). Convolutions share weights across positions, so the network then
finds the object wherever it moved in the other frames. The loss is the paper's weighted binary
cross-entropy: non-object pixels weigh α = 0.8, so a missed object pixel costs more than a wrongly
included background pixel (inpainting can fill extra background; it cannot remove a leftover object).
The authors' code lacks this weighting; their paper has it.

Deviation, on purpose: the paper leaves the original object location out of the loss (its pixels
are unknown once the object has moved); here the object is copied, not moved, so the original
location is still the object and is supervised as such.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import kornia
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from vilocal_dist.device import pick_device
from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.inpaint.base import check_cfg


@dataclass(frozen=True)
class PropagationConfig:
    iters: int = 300  # the paper trains 6,000 iterations at full size; tiny nets at ≤128 px need far fewer
    size: int = 128  # longest side of the working resolution (frames are only ever shrunk)
    width: int = 16  # channels of the first level (×2, ×4 deeper)
    batch: int = 4
    lr: float = 2e-3
    alpha: float = 0.8  # BCE weight of non-object pixels (paper)
    threshold: float = 0.5
    scale_jitter: float = 0.15  # pasted copy scaled by a factor in [1 − j, 1 + j]
    brightness_jitter: float = 0.1  # whole-image gain in [1 − b, 1 + b], for lighting changes across frames
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.iters < 1 or self.size < 16 or self.width < 1 or self.batch < 1 or self.lr <= 0:
            raise ConfigError("propagation: iters, width, batch, lr must be positive and size ≥ 16")
        if not 0 < self.alpha <= 1 or not 0 < self.threshold < 1:
            raise ConfigError("propagation: alpha must be in (0, 1] and threshold in (0, 1)")
        if not 0 <= self.scale_jitter < 1 or not 0 <= self.brightness_jitter < 1:
            raise ConfigError("propagation: scale_jitter and brightness_jitter must be in [0, 1)")


class SegNet(nn.Module):
    """Three-level U-Net with dilated bottleneck: (B, 3, H, W) in [0, 1] → logits (B, 1, H, W); H, W % 4 == 0."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width

        def block(i: int, o: int, s: int = 1, d: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, stride=s, padding=d, dilation=d), nn.ReLU())

        self.enc1 = nn.Sequential(block(3, w), block(w, w))
        self.enc2 = nn.Sequential(block(w, 2 * w, s=2), block(2 * w, 2 * w))
        self.mid = nn.Sequential(block(2 * w, 4 * w, s=2), block(4 * w, 4 * w, d=2), block(4 * w, 4 * w, d=4))
        self.dec2 = block(6 * w, 2 * w)
        self.dec1 = block(3 * w, w)
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x - 0.5)
        e2 = self.enc2(e1)
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        d2 = self.dec2(torch.cat([up(self.mid(e2)), e2], dim=1))
        return self.head(self.dec1(torch.cat([up(d2), e1], dim=1)))


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mean of −[y·log p + α·(1 − y)·log(1 − p)] with p = σ(logits); all (B, 1, H, W)."""
    weight = target + alpha * (1 - target)
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


def _working_size(h: int, w: int, longest: int) -> tuple[int, int]:
    scale = min(1.0, longest / max(h, w))
    return max(4, round(h * scale / 4) * 4), max(4, round(w * scale / 4) * 4)


def _paste_batch(
    frame: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, batch: int, cfg: PropagationConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs: ``frame`` (1, 3, h, w) with the object (``mask`` (1, 1, h, w) float) copied to a
    random centre at a random scale; returns images (B, 3, h, w) and labels (B, 1, h, w)."""
    h, w = frame.shape[-2:]
    ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
    cy, cx = ys.float().mean().item(), xs.float().mean().item()
    ty, tx = rng.uniform(0, h, batch), rng.uniform(0, w, batch)
    scale = rng.uniform(1 - cfg.scale_jitter, 1 + cfg.scale_jitter, batch)
    as_t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    matrix = kornia.geometry.transform.get_affine_matrix2d(
        translations=as_t(np.stack([tx - cx, ty - cy], 1)),
        center=as_t([[cx, cy]] * batch),
        scale=as_t(np.stack([scale, scale], 1)),
        angle=as_t(np.zeros(batch)),
    ).to(frame.device)
    both = torch.cat([frame, mask], dim=1).expand(batch, -1, -1, -1)
    moved = kornia.geometry.transform.warp_perspective(both, matrix, (h, w), align_corners=True)
    copy = moved[:, 3:] > 0.5
    images = torch.where(copy, moved[:, :3], frame)
    gain = as_t(rng.uniform(1 - cfg.brightness_jitter, 1 + cfg.brightness_jitter, batch)).to(frame.device)
    images = (images * gain.view(-1, 1, 1, 1)).clamp(0, 1)
    labels = (copy | (mask > 0.5)).float()
    return images, labels


def propagate_mask(
    frames: np.ndarray,
    mask: np.ndarray,
    frame_index: int,
    cfg: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Masks for every frame (bool ``T×H×W``) from ``mask`` (bool ``H×W``) of frame ``frame_index``.

    ``frames``: uint8 ``T×H×W×3``. ``cfg``: ``PropagationConfig`` fields (unknown keys rejected).
    The annotated frame's own mask is returned unchanged.
    """
    conf = PropagationConfig(**check_cfg(cfg, asdict(PropagationConfig()), "propagation"))
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"frames must be uint8 T×H×W×3, got {frames.dtype} {frames.shape}")
    if mask.shape != frames.shape[1:3] or mask.dtype != np.bool_:
        raise InputError(f"mask must be bool H×W = {frames.shape[1:3]}, got {mask.dtype} {mask.shape}")
    if not -len(frames) <= frame_index < len(frames):
        raise InputError(f"frame_index {frame_index} outside the video's {len(frames)} frames")
    if not mask.any():
        raise InputError(f"the mask of frame {frame_index} is empty: nothing to propagate")
    frame_index %= len(frames)
    device = pick_device(conf.device)
    t_count, height, width = frames.shape[:3]
    h, w = _working_size(height, width, conf.size)
    small = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    video = rearrange(torch.from_numpy(small).to(device).float() / 255, "t h w c -> t c h w")
    small_mask = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
    if not small_mask.any():  # an object thinner than a working pixel: keep every pixel it touches
        small_mask = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0
    anchor = video[frame_index : frame_index + 1]
    anchor_mask = torch.from_numpy(small_mask).to(device).float()[None, None]

    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SegNet(conf.width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=conf.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / conf.iters)))
    for _ in tqdm(range(conf.iters), desc="propagate mask", disable=not progress, unit="it"):
        images, labels = _paste_batch(anchor, anchor_mask, rng, conf.batch, conf)
        loss = weighted_bce(net(images), labels, conf.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(net(video[i : i + 8])) for i in range(0, t_count, 8)])
        probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
    out = probs[:, 0].cpu().numpy() > conf.threshold
    out[frame_index] = mask
    return out

