"""Object masks for a whole video from one annotated frame (IIVI paper, section 4.2, extended).

A small segmentation network is trained on the annotated frame: each training image is that frame
with a copy of the object pasted at a random place and scale, and the label marks every object
pixel (the original and the copy). Convolutions share weights across positions, so the network then
finds the object wherever it moved in the other frames. The loss is the paper's weighted binary
cross-entropy: non-object pixels weigh α = 0.8, so a missed object pixel costs more than a wrongly
included background pixel (inpainting can fill extra background; it cannot remove a leftover object).
The authors' code lacks this weighting; their paper has it.

How long to fit is decided by a stopping rule (``stop_reason``), not a fixed budget: the loss has
plateaued, the prediction on the annotated frame agrees with its mask, and the frame-to-frame
consistency of the predicted masks around it has settled; never past ``max_iters``.

Trained on one frame, the network learns the object as it looks there and finds look-alikes in
backgrounds it never saw. So frames are visited outward from the annotated one (both directions
from a middle frame), and two cues are combined, as in online-adaptive video object segmentation:
the network's mask keeps only the connected parts near the previous frame's mask carried by DIS
optical flow, and frames whose mask is confident become training examples (their uncertain rim
left out) on which the network keeps adapting, to the object's changing appearance and to new
background. Per-frame confidence and flags (empty mask, sudden area change, low confidence) tell
users which frames to check.

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
from vilocal_dist.inpaint.flow import dis_estimator, dis_flow, warp


@dataclass(frozen=True)
class PropagationConfig:
    max_iters: int = 300  # cap of the stopping rule (the paper: 6,000 at full size, on a GPU)
    min_iters: int = 100  # no stop before this (max_iters wins when smaller)
    check_every: int = 50  # iterations between two checks of the stopping rule
    plateau: float = 0.05  # the loss has plateaued when a check improves it by less than this fraction
    agree: float = 0.8  # IoU the prediction on the annotated frame must reach before stopping
    steady: float = 0.03  # largest change in frame-to-frame consistency between checks at a plateau
    size: int = 432  # longest side of the working resolution (frames are only ever shrunk)
    width: int = 16  # channels of the first level (×2, ×4 deeper)
    batch: int = 4
    lr: float = 2e-3
    alpha: float = 0.8  # BCE weight of non-object pixels (paper)
    threshold: float = 0.5
    scale_jitter: float = 0.15  # pasted copy scaled by a factor in [1 − j, 1 + j]
    brightness_jitter: float = 0.1  # whole-image gain in [1 − b, 1 + b], for lighting changes across frames
    gate: float = 0.5  # flow window radius as a fraction of the object's size (√area); 0 = network alone
    adapt_every: int = 4  # online adaptation after every N propagated frames; 0 = off
    adapt_iters: int = 20
    confident: float = 0.6  # frames at least this confident become training examples
    area_jump: float = 1.6  # flag a frame whose mask area changes by more than this factor
    device: str = "auto"

    def __post_init__(self) -> None:
        if min(self.max_iters, self.min_iters, self.check_every, self.width, self.batch) < 1 or self.lr <= 0:
            raise ConfigError("propagation: max_iters, min_iters, check_every, width, batch, lr must be positive")
        if self.size < 16:
            raise ConfigError("propagation: size must be ≥ 16")
        if not 0 < self.alpha <= 1 or not 0 < self.threshold < 1:
            raise ConfigError("propagation: alpha must be in (0, 1] and threshold in (0, 1)")
        if not 0 <= self.scale_jitter < 1 or not 0 <= self.brightness_jitter < 1:
            raise ConfigError("propagation: scale_jitter and brightness_jitter must be in [0, 1)")
        if self.gate < 0 or not 0 <= self.confident <= 1:
            raise ConfigError("propagation: gate must be ≥ 0 and confident in [0, 1]")
        if self.adapt_every < 0 or self.adapt_iters < 0 or self.area_jump <= 1:
            raise ConfigError("propagation: adapt_every, adapt_iters must be ≥ 0 and area_jump > 1")


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


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, alpha: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of −[y·log p + α·(1 − y)·log(1 − p)] with p = σ(logits); all (B, 1, H, W).

    ``valid`` (0/1, same shape) leaves pixels out, e.g. the uncertain rim of a propagated mask."""
    weight = target + alpha * (1 - target)
    if valid is not None:
        weight = weight * valid
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


@dataclass(frozen=True)
class Check:
    """One check of the stopping rule while fitting the annotated frame."""

    iters: int
    loss: float  # mean training loss since the previous check
    anchor_iou: float  # prediction on the annotated frame vs its mask
    consistency: float  # mean IoU of consecutive predicted masks around the annotated frame


def stop_reason(history: list[Check], cfg: PropagationConfig) -> str | None:
    """Why fitting should stop after ``history[-1]``: "converged", "max_iters", or None to go on.

    Converged = the loss plateaued (improved by < ``plateau`` since the last check), the
    frame-to-frame consistency stopped changing (by ≤ ``steady``) and the annotated frame is
    predicted with IoU ≥ ``agree``; never before ``min_iters``, never past ``max_iters``."""
    last = history[-1]
    if last.iters >= cfg.max_iters:
        return "max_iters"
    if last.iters < cfg.min_iters or len(history) < 2:
        return None
    prev = history[-2]
    plateau = prev.loss - last.loss <= cfg.plateau * prev.loss
    steady = abs(last.consistency - prev.consistency) <= cfg.steady
    return "converged" if plateau and steady and last.anchor_iou >= cfg.agree else None


@dataclass
class Propagation:
    """Masks for every frame, with what the propagation knows about its own reliability."""

    masks: np.ndarray  # bool T×H×W at the input resolution; the annotated frame's mask unchanged
    confidence: np.ndarray  # float T in [0, 1], see _confidence (1 on the annotated frame)
    area: np.ndarray  # float T: mask area as a fraction of the frame
    flagged: list[int]  # frames where the mask may have lost the object
    reasons: dict[int, str]  # frame -> why it was flagged
    iters: int  # fitting iterations chosen by the stopping rule
    stop: str  # "converged" or "max_iters"
    adapt_iters: int  # online-adaptation iterations on top
    history: list[Check]
    config: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures for result.json."""
        return {
            "iters": self.iters,
            "stop": self.stop,
            "adapt_iters": self.adapt_iters,
            "confidence": [round(float(c), 4) for c in self.confidence],
            "mean_confidence": float(self.confidence.mean()),
            "area": [round(float(a), 5) for a in self.area],
            "flagged": self.flagged,
            "flag_reasons": {str(k): v for k, v in self.reasons.items()},
            "config": self.config,
        }


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


class _Segmenter:
    """The network, its optimiser, and the training examples it has seen (annotated + adopted frames)."""

    def __init__(self, anchor: torch.Tensor, anchor_mask: torch.Tensor, cfg: PropagationConfig, seed: int) -> None:
        self.cfg, self.anchor, self.anchor_mask = cfg, anchor, anchor_mask
        self.rng = np.random.default_rng(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = SegNet(cfg.width).to(anchor.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # image, label, valid

    def step(self) -> float:
        """One update: pasted copies of the annotated object, half the batch from adopted frames."""
        cfg = self.cfg
        n_adopted = min(cfg.batch // 2, len(self.examples))
        images, labels = _paste_batch(self.anchor, self.anchor_mask, self.rng, cfg.batch - n_adopted, cfg)
        valid = torch.ones_like(labels)
        if n_adopted:
            picks = self.rng.choice(len(self.examples), n_adopted, replace=False)
            image, label, keep = (torch.cat(parts) for parts in zip(*(self.examples[i] for i in picks)))
            images, labels, valid = torch.cat([images, image]), torch.cat([labels, label]), torch.cat([valid, keep])
        loss = weighted_bce(self.net(images), labels, cfg.alpha, valid)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def adopt(self, image: torch.Tensor, mask: np.ndarray) -> None:
        """``mask`` (bool h×w) of ``image`` (1, 3, h, w) becomes a training example; its 2-pixel rim is ignored."""
        kernel = np.ones((5, 5), np.uint8)
        m = mask.astype(np.uint8)
        rim = cv2.dilate(m, kernel) != cv2.erode(m, kernel)
        as_t = lambda a: torch.from_numpy(a.astype(np.float32)).to(image.device)[None, None]  # noqa: E731
        self.examples.append((image, as_t(mask), as_t(~rim)))

    @torch.no_grad()
    def probs(self, video: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.sigmoid(self.net(video[i : i + 8])) for i in range(0, len(video), 8)])[:, 0]


def _fit(seg: _Segmenter, video: torch.Tensor, index: int, progress: bool) -> tuple[list[Check], str]:
    """Fit the annotated frame until the stopping rule says so (checks every ``check_every`` iterations)."""
    cfg = seg.cfg
    near = video[max(0, index - 4) : index + 5]
    at = index - max(0, index - 4)
    history: list[Check] = []
    losses: list[float] = []
    bar = tqdm(total=cfg.max_iters, desc="fit mask", disable=not progress, unit="it")
    while True:
        losses.append(seg.step())
        bar.update()
        if len(losses) % cfg.check_every and len(losses) < cfg.max_iters:
            continue
        pred = seg.probs(near) > cfg.threshold
        consistency = float(np.mean([_iou(a, b) for a, b in zip(pred[:-1], pred[1:])])) if len(pred) > 1 else 1.0
        history.append(
            Check(len(losses), float(np.mean(losses[-cfg.check_every :])), _iou(pred[at], seg.anchor_mask[0, 0] > 0.5), consistency)
        )
        reason = stop_reason(history, cfg)
        if reason:
            bar.close()
            return history, reason


def _outward(index: int, count: int) -> list[tuple[int, int]]:
    """(frame, neighbour it is propagated from), alternating sides outward from ``index``."""
    order = []
    for step in range(1, count):
        order += [(index + step, index + step - 1)] if index + step < count else []
        order += [(index - step, index - step + 1)] if index - step >= 0 else []
    return order


def _select(prob: np.ndarray, prior: np.ndarray, cfg: PropagationConfig) -> np.ndarray:
    """The network's mask (``prob`` > threshold) reduced to its connected parts that touch the
    neighbourhood of ``prior`` (the previous mask carried by optical flow): a generous window,
    ``gate``·√area pixels, because flow on thin fast objects is often wrong. Parts elsewhere are
    look-alikes in the background. If no part touches it, the largest part is kept (the object
    may have jumped; the frame's confidence is then 0 and it gets flagged)."""
    net = (prob > cfg.threshold).astype(np.uint8)
    count, labels = cv2.connectedComponents(net, connectivity=8)
    area = float((prior > 0.5).sum())
    if count <= 1 or cfg.gate == 0 or area == 0:
        return net.astype(bool)
    radius = max(3, round(cfg.gate * math.sqrt(area)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    window = cv2.dilate((prior > 0.5).astype(np.uint8), kernel) > 0
    near = np.unique(labels[window & (labels > 0)])
    if not len(near):
        near = [int(np.bincount(labels.ravel())[1:].argmax()) + 1]
    return np.isin(labels, near)


def _confidence(prob: np.ndarray, mask: np.ndarray, prior: np.ndarray) -> float:
    """How much to trust a frame's mask, in [0, 1]: the larger of its agreement with the flow-carried
    previous mask (IoU) and the network's certainty inside it (mean 2p − 1). Either cue alone can
    fail (flow on fast thin objects, the network on look-alikes); a lost object fails both."""
    union = (mask | prior).sum()
    agreement = (mask & prior).sum() / union if union else 0.0
    certainty = float(np.clip(2 * prob[mask] - 1, 0, 1).mean()) if mask.any() else 0.0
    return max(float(agreement), certainty)


def _flags(confidence: np.ndarray, area: np.ndarray, index: int, cfg: PropagationConfig) -> dict[int, str]:
    """Frames whose mask may have lost the object: empty, a sudden area change, or low confidence."""
    reasons: dict[int, str] = {}
    for t, _ in _outward(index, len(area)):
        prev = t - 1 if t > index else t + 1
        if area[t] == 0:
            reasons[t] = "empty mask"
        elif area[prev] > 0 and max(area[t] / area[prev], area[prev] / area[t]) > cfg.area_jump:
            reasons[t] = f"area ×{area[t] / area[prev]:.2f} from frame {prev}"
        elif confidence[t] < cfg.confident:
            reasons[t] = f"low confidence {confidence[t]:.2f}"
    return dict(sorted(reasons.items()))


def check_propagation_config(cfg: dict[str, Any] | None) -> PropagationConfig:
    """``cfg`` over the defaults, checked (unknown keys and illegal values are a ConfigError)."""
    return PropagationConfig(**check_cfg(cfg, asdict(PropagationConfig()), "propagation"))


def dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """bool T×H×W masks grown by ``radius`` pixels (disc), the margin inpainting needs around an
    object whose outline is uncertain (blur, shadow, a propagated edge)."""
    if radius == 0:
        return masks
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in masks])


def propagate_mask(
    frames: np.ndarray,
    mask: np.ndarray,
    frame_index: int,
    cfg: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
) -> Propagation:
    """Masks for every frame from ``mask`` (bool ``H×W``) of frame ``frame_index``.

    ``frames``: uint8 ``T×H×W×3``. ``cfg``: ``PropagationConfig`` fields (unknown keys rejected).
    The network is fitted to the annotated frame until the stopping rule holds; then frames are
    visited outward from the annotated one (both directions): the network's mask keeps only the
    parts near the previous mask carried by DIS optical flow; frames where the two agree
    (confidence ≥ ``confident``) become training examples and the network adapts on them every
    ``adapt_every`` frames, following the object's changing appearance and new backgrounds.
    """
    conf = check_propagation_config(cfg)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"frames must be uint8 T×H×W×3, got {frames.dtype} {frames.shape}")
    if mask.shape != frames.shape[1:3] or mask.dtype != np.bool_:
        raise InputError(f"mask must be bool H×W = {frames.shape[1:3]}, got {mask.dtype} {mask.shape}")
    if not -len(frames) <= frame_index < len(frames):
        raise InputError(f"frame_index {frame_index} outside the video's {len(frames)} frames")
    if not mask.any():
        raise InputError(f"the mask of frame {frame_index} is empty: nothing to propagate")
    index = frame_index % len(frames)
    device = pick_device(conf.device)
    t_count, height, width = frames.shape[:3]
    h, w = _working_size(height, width, conf.size)
    small = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
    video = rearrange(torch.from_numpy(small).to(device).float() / 255, "t h w c -> t c h w")
    shrunk = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    small_mask = shrunk >= 0.5 if (shrunk >= 0.5).any() else shrunk > 0  # keep objects thinner than a pixel
    seg = _Segmenter(video[index : index + 1], torch.from_numpy(small_mask).to(device).float()[None, None], conf, seed)
    history, stop = _fit(seg, video, index, progress)

    masks_small = np.zeros((t_count, h, w), bool)
    masks_small[index] = small_mask
    confidence = np.ones(t_count, np.float32)
    estimator = dis_estimator("medium")
    adapt_iters = 0
    order = _outward(index, t_count)
    for done, (t, prev) in enumerate(tqdm(order, desc="propagate mask", disable=not progress, unit="frame"), 1):
        prob = seg.probs(video[t : t + 1])[0].cpu().numpy()
        prior = warp(masks_small[prev].astype(np.float32), dis_flow(small[t], small[prev], estimator)) > 0.5
        masks_small[t] = _select(prob, prior, conf)
        confidence[t] = _confidence(prob, masks_small[t], prior)
        if confidence[t] >= conf.confident and conf.adapt_every:
            seg.adopt(video[t : t + 1], masks_small[t])
        if conf.adapt_every and done % conf.adapt_every == 0 and seg.examples:
            for _ in range(conf.adapt_iters):
                seg.step()
            adapt_iters += conf.adapt_iters

    masks = np.stack([cv2.resize(m.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5 for m in masks_small])
    masks[index] = mask
    area = masks.reshape(t_count, -1).mean(axis=1)
    reasons = _flags(confidence, area, index, conf)
    return Propagation(
        masks, confidence, area, sorted(reasons), reasons, history[-1].iters, stop, adapt_iters, history, asdict(conf)
    )
