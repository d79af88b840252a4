"""Contrastive and focal losses against cases computed by hand with plain math."""

from __future__ import annotations

import math

import pytest
import torch

from vilocal_dist.errors import ConfigError
from vilocal_dist.losses import (
    FocalLoss,
    PixelContrastiveLoss,
    focal_loss,
    labels_at,
    pixel_contrastive_loss,
)
from vilocal_dist.losses.contrastive import IGNORED, LABEL_MODES

# Four pixels of a 2×2 feature map (row-major), C = 2; the last one is inpainted.
VECTORS = [[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.5]]
FORGED = [[False, False], [False, True]]


def _features(vectors: list[list[float]]) -> torch.Tensor:
    return torch.tensor(vectors).T.reshape(1, 2, 2, 2)  # [B=1, C=2, h=2, w=2]


def _unit(v: list[float]) -> list[float]:
    n = math.hypot(*v)
    return [x / n for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _expected(anchors: list[list[float]], negatives: list[list[float]], tau: float):
    """Mean CE over anchors, mean positive logit, mean negative cosine — by hand."""
    a = [_unit(v) for v in anchors]
    n = [_unit(v) for v in negatives]
    losses, pos_all, neg_all = [], [], []
    for i, ai in enumerate(a):
        pos = sum(_dot(ai, aj) for j, aj in enumerate(a) if j != i) / (len(a) - 1)
        negs = [_dot(ai, nk) for nk in n]
        denom = math.exp(pos / tau) + sum(math.exp(s / tau) for s in negs)
        losses.append(-math.log(math.exp(pos / tau) / denom))
        pos_all.append(pos)
        neg_all.extend(negs)
    return sum(losses) / len(losses), sum(pos_all) / len(pos_all), sum(neg_all) / len(neg_all)


def test_contrastive_hand_computed() -> None:
    tau = 0.5
    out = pixel_contrastive_loss(_features(VECTORS), torch.tensor([FORGED]), temperature=tau)
    loss, pos, neg = _expected(VECTORS[:3], VECTORS[3:], tau)
    assert out["loss"].item() == pytest.approx(loss, rel=1e-5)
    assert out["pos_sim"].item() == pytest.approx(pos, rel=1e-5)
    assert out["neg_sim"].item() == pytest.approx(neg, rel=1e-5)
    assert out["n_valid"] == 1


def test_cell_labels_on_a_hand_built_mask() -> None:
    """An 8×8 mask on a 2×2 grid of 4×4 cells. Cell (0, 0): one forged pixel, at the cell's centre
    pixel (2, 2); cell (0, 1): one forged pixel, at its top-left corner (0, 4) (what PyTorch's
    plain "nearest" would read); cell (1, 0): pristine; cell (1, 1): all forged."""
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2, 2] = True
    mask[0, 0, 4] = True
    mask[0, 4:, 4:] = True
    assert labels_at(mask, (2, 2), "centre").tolist() == [[[1, 0], [0, 1]]]
    assert labels_at(mask, (2, 2), "ignore_mixed").tolist() == [[[IGNORED, IGNORED], [0, 1]]]
    # Cells of 4×3 pixels ([B, 1, H, W] float masks): the centre is row 2, column 1 of each cell.
    wide = torch.zeros(1, 1, 4, 6)
    wide[0, 0, 2, 1] = 1.0
    wide[0, 0, :, 3:] = 1.0
    assert labels_at(wide, (1, 2), "centre").tolist() == [[[1, 1]]]
    assert labels_at(wide, (1, 2), "ignore_mixed").tolist() == [[[IGNORED, 1]]]
    with pytest.raises(ValueError, match="centre, ignore_mixed"):
        labels_at(mask, (2, 2), "nearest")


@pytest.mark.parametrize("mode, anchors", [("centre", VECTORS[:3]), ("ignore_mixed", VECTORS[1:3])])
def test_contrastive_loss_follows_the_cell_labels(mode: str, anchors: list[list[float]]) -> None:
    """A 4×4 mask on 2×2 features: the first cell has one forged pixel off its centre (pristine for
    "centre", left out by "ignore_mixed"), the last cell is all forged (the negative)."""
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[0, 2:, 2:] = True
    out = PixelContrastiveLoss(temperature=0.1, label_mode=mode)(_features(VECTORS), mask)
    loss, pos, neg = _expected(anchors, VECTORS[3:], 0.1)
    assert out["loss"].item() == pytest.approx(loss, rel=1e-5)
    assert (out["pos_sim"].item(), out["neg_sim"].item()) == (pytest.approx(pos, rel=1e-5), pytest.approx(neg, rel=1e-5))


def test_label_modes_are_those_the_training_config_accepts() -> None:
    from vilocal_dist.engines.config import CONTRASTIVE_LABELS, TrainConfig

    assert CONTRASTIVE_LABELS == LABEL_MODES
    with pytest.raises(ConfigError, match="label mode must be one of centre, ignore_mixed"):
        PixelContrastiveLoss(label_mode="nearest")
    with pytest.raises(ConfigError, match="contrastive_labels must be one of centre, ignore_mixed, got 'corner'"):
        TrainConfig(contrastive_labels="corner")


def test_minimising_the_loss_pulls_anchors_together_and_pushes_negatives_away() -> None:
    """Free embeddings (random, so anchors and negatives start mixed) trained on the loss alone:
    the positive similarity ends well above the negative one."""
    torch.manual_seed(0)
    feats = torch.randn(1, 8, 4, 4, requires_grad=True)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :, :2] = True
    optimizer = torch.optim.SGD([feats], lr=0.5)
    first = pixel_contrastive_loss(feats, masks, temperature=0.1)
    for _ in range(20):
        out = pixel_contrastive_loss(feats, masks, temperature=0.1)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert abs(first["pos_sim"].item() - first["neg_sim"].item()) < 0.5
    assert out["pos_sim"].item() > out["neg_sim"].item() + 0.5
    assert -1.0 <= out["neg_sim"].item() < out["pos_sim"].item() <= 1.0


def test_contrastive_sampling_caps_anchors_and_is_reproducible() -> None:
    """max_samples=2 of 3 anchors: the loss is that of one of the three anchor pairs."""
    tau = 0.2
    pairs = [(0, 1), (0, 2), (1, 2)]
    candidates = [_expected([VECTORS[i], VECTORS[j]], VECTORS[3:], tau)[0] for i, j in pairs]
    seen = set()
    for seed in range(8):
        gen = torch.Generator().manual_seed(seed)
        value = pixel_contrastive_loss(
            _features(VECTORS), torch.tensor([FORGED]), temperature=tau, max_samples=2,
            generator=gen,
        )["loss"].item()
        match = [
            k for k, c in enumerate(candidates)
            if math.isclose(value, c, rel_tol=1e-4, abs_tol=1e-6)
        ]
        assert len(match) == 1
        seen.add(match[0])
        again = pixel_contrastive_loss(
            _features(VECTORS), torch.tensor([FORGED]), temperature=tau, max_samples=2,
            generator=torch.Generator().manual_seed(seed),
        )["loss"].item()
        assert again == value
    assert len(seen) > 1  # the subsets really are random


@pytest.mark.parametrize(
    "other_mask",
    [[[False, False], [False, False]], [[True, True], [True, True]], [[True, True], [False, True]]],
)
def test_invalid_samples_are_skipped(other_mask: list[list[bool]]) -> None:
    """No forged pixel, no pristine pixel, or a single anchor: the sample adds no term."""
    feats = torch.cat([_features(VECTORS), _features(VECTORS[::-1])])
    masks = torch.tensor([FORGED, other_mask])
    out = pixel_contrastive_loss(feats, masks, temperature=0.1)
    assert out["n_valid"] == 1
    expected = _expected(VECTORS[:3], VECTORS[3:], 0.1)[0]
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("fill", [False, True])
def test_no_valid_sample_gives_connected_zero(fill: bool) -> None:
    feats = torch.randn(2, 4, 3, 3, requires_grad=True)
    masks = torch.full((2, 12, 12), fill)
    out = pixel_contrastive_loss(feats, masks)
    assert out["n_valid"] == 0
    assert out["loss"].item() == 0.0 and out["loss"].grad_fn is not None
    out["loss"].backward()
    assert feats.grad is not None and torch.equal(feats.grad, torch.zeros_like(feats))
    assert out["pos_sim"].item() == 0.0 and out["neg_sim"].item() == 0.0


def test_contrastive_gradients_finite_with_zero_feature_vectors() -> None:
    feats = torch.randn(2, 8, 6, 6)
    feats[:, :, 0, :] = 0.0  # zero embeddings must not produce NaN through the normalisation
    feats.requires_grad_(True)
    masks = torch.zeros(2, 24, 24, dtype=torch.bool)
    masks[:, 8:16, 8:16] = True
    out = PixelContrastiveLoss(temperature=0.1)(feats, masks)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(feats.grad).all()
    assert out["n_valid"] == 2


@pytest.mark.parametrize("tau", [0.0, -0.1, float("nan")])
def test_contrastive_rejects_bad_temperature(tau: float) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        PixelContrastiveLoss(temperature=tau)


def _focal_by_hand(logits: list[float], targets: list[int], alpha: float, gamma: float) -> float:
    """Eq. 2 of the paper, per pixel, averaged: -α(1−M)^γ G log M − (1−α) M^γ (1−G) log(1−M)."""
    total = 0.0
    for x, g in zip(logits, targets):
        m = 1.0 / (1.0 + math.exp(-x))
        total += -alpha * (1 - m) ** gamma * g * math.log(m)
        total += -(1 - alpha) * m**gamma * (1 - g) * math.log(1 - m)
    return total / len(logits)


@pytest.mark.parametrize("alpha, gamma", [(0.5, 2.0), (0.25, 2.0), (0.8, 0.0), (0.5, 0.5)])
def test_focal_hand_computed(alpha: float, gamma: float) -> None:
    logits = [2.0, -1.0, 0.5, -3.0]
    targets = [1, 0, 0, 1]
    out = focal_loss(torch.tensor(logits).reshape(1, 1, 2, 2),
                     torch.tensor(targets, dtype=torch.bool).reshape(1, 2, 2),
                     alpha=alpha, gamma=gamma)
    expected = _focal_by_hand(logits, targets, alpha, gamma)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_focal_is_stable_at_extreme_logits() -> None:
    logits = torch.tensor([100.0, -100.0, 100.0, -100.0], requires_grad=True)
    targets = torch.tensor([1.0, 0.0, 0.0, 1.0])
    out = FocalLoss(alpha=0.25, gamma=2.0)(logits, targets)
    out["loss"].backward()
    # Right answers cost ~0; wrong ones cost α_t · 1 · 100 each: (0.75·100 + 0.25·100) / 4 = 25.
    assert out["loss"].item() == pytest.approx(25.0, rel=1e-5)
    assert torch.isfinite(logits.grad).all()
    for gamma in (0.5, 0.0):
        x = torch.tensor([200.0], requires_grad=True)
        focal_loss(x, torch.ones(1), gamma=gamma)["loss"].backward()
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("alpha, gamma", [(-0.1, 2.0), (1.1, 2.0), (0.5, -1.0)])
def test_focal_rejects_bad_parameters(alpha: float, gamma: float) -> None:
    with pytest.raises(ConfigError):
        FocalLoss(alpha=alpha, gamma=gamma)
