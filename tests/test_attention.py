"""Attention kernels: the CPU dropout attention, its mask distribution, bf16 blocks, the authors' form."""

from __future__ import annotations

import math

import pytest
import torch

from vilocal_dist.models import attention as attn_mod
from vilocal_dist.models.attention import (
    _DropoutAttention, attention, attention_impl, authors_attention, blocked_attention, drop_mask,
    use_bf16_inference,
)


def _qkv(n: int = 37, d: int = 8, batch: int = 1, heads: int = 1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, heads, n, d, generator=gen, dtype=dtype, requires_grad=True) for _ in range(3)]


def _reference(q, k, v, drop: torch.Tensor, p: float) -> torch.Tensor:
    """The textbook form with an explicit mask: softmax(q kᵀ/√d) ⊙ keep / (1 − p) @ v."""
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (probs * (~drop) / (1 - p)) @ v


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_drop_mask_has_the_bernoulli_distribution(p: float) -> None:
    """Rate within 5σ of p, and neighbours (the two 32-bit halves of one 64-bit draw, and
    consecutive draws) are independent: pair frequencies match p², p(1−p), (1−p)²."""
    gen = torch.Generator().manual_seed(1)
    n = 2_000_000
    mask = drop_mask((n,), p, generator=gen)
    assert mask.dtype == torch.bool and mask.shape == (n,)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(mask.double().mean().item() - p) < 5 * sigma
    for offset in (1, 2):  # same word, next word
        a, b = mask[:-offset].double(), mask[offset:].double()
        both = (a * b).mean().item()
        assert abs(both - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / n)
    torch_ref = torch.empty(n).bernoulli_(p, generator=gen)  # the same law as PyTorch's own
    assert abs(torch_ref.mean().item() - mask.double().mean().item()) < 10 * sigma


def test_drop_mask_odd_sizes_and_shapes() -> None:
    mask = drop_mask((3, 5, 7), 0.3)
    assert mask.shape == (3, 5, 7)
    assert not drop_mask((1001,), 0.0).any()


@pytest.mark.parametrize("chunk", [5, 64])
def test_dropout_attention_matches_explicit_form_and_gradients(chunk: int) -> None:
    """Same mask (same seeded generator, one head, so chunk draws concatenate row-major): output
    and q/k/v gradients equal the textbook formula's."""
    p = 0.3
    q, k, v = _qkv()
    out = _DropoutAttention.apply(q, k, v, p, chunk, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    rows = [drop_mask((1, 1, min(chunk, 37 - s), 37), p, generator=gen) for s in range(0, 37, chunk)]
    drop = torch.cat(rows, dim=2)
    ref = _reference(q, k, v, drop, p)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_dropout_attention_rows_are_stochastic_in_expectation() -> None:
    """With v = 1, each row is Σ dropped/rescaled weights: mean 1 over many rows, never negative."""
    q, k, _ = _qkv(n=200, d=16, batch=2, heads=2, dtype=torch.float32)
    v = torch.ones_like(q)
    out = attention(q.detach(), k.detach(), v, dropout_p=0.5, chunk=64)
    assert out.min() >= 0
    assert abs(out.mean().item() - 1.0) < 0.05


def test_without_dropout_cpu_attention_is_sdpa() -> None:
    q, k, v = (t.detach().float() for t in _qkv())
    with attention_impl(precision="fp32"):
        torch.testing.assert_close(attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_authors_formulation_equals_fast_attention() -> None:
    q, k, v = (t.detach() for t in _qkv())
    with attention_impl("authors"):
        authors = attention(q, k, v)
    torch.testing.assert_close(authors, attention(q, k, v))
    torch.testing.assert_close(authors, authors_attention(q, k, v, 0.0))


def test_blocked_bf16_attention_is_close_to_fp32() -> None:
    q, k, v = (t.detach().float() for t in _qkv(n=150, d=16, heads=2))
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    blocked = blocked_attention(q, k, v, block=64)
    assert blocked.dtype == torch.float32
    assert (blocked - exact).abs().max() < 3e-2
    torch.testing.assert_close(blocked_attention(q, k, v, block=64, dtype=torch.float32), exact)


def test_bf16_only_where_native_or_forced(monkeypatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(attn_mod, "bf16_native", lambda: False)
    assert not use_bf16_inference(cpu)
    with attention_impl(precision="bf16"):
        assert use_bf16_inference(cpu)
    monkeypatch.setattr(attn_mod, "bf16_native", lambda: True)
    assert use_bf16_inference(cpu)
    with attention_impl(precision="fp32"):
        assert not use_bf16_inference(cpu)
    assert not use_bf16_inference(torch.device("meta"))  # CUDA gets bf16 from autocast instead


def test_attention_impl_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="impl"):
        with attention_impl("flash"):
            pass


def _pixel_f1(probs: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean over frames of the pixel F1 at threshold 0.5 (an empty frame predicted empty scores 1)."""
    pred, gt = probs[:, 0] > 0.5, masks
    tp = (pred & gt).sum(dim=(1, 2)).double()
    denom = pred.sum(dim=(1, 2)) + gt.sum(dim=(1, 2))
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(tp)).mean().item()


def _composed_clips(seeds: range, size=(32, 48)) -> tuple[torch.Tensor, torch.Tensor]:
    from vilocal_dist.data.composed import compose_video

    videos = [compose_video(seed, 5, size) for seed in seeds]
    clips = torch.stack([torch.from_numpy(v.frames).permute(3, 0, 1, 2) for v in videos]).float() / 255
    return clips, torch.stack([torch.from_numpy(v.masks[2]) for v in videos])


def test_bf16_inference_matches_fp32_on_a_trained_model() -> None:
    """A tiny detector trained for a few focal-loss steps: bf16 attention moves probabilities by
    less than 2e-2 and F1 on held-out composed clips by less than 0.01."""
    from vilocal_dist.losses import focal_loss
    from vilocal_dist.models import create_model

    torch.manual_seed(0)
    model = create_model("vilocal_tiny").train()
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train_clips, train_masks = _composed_clips(range(4))
    for _ in range(8):
        optim.zero_grad()
        focal_loss(model(train_clips)["pred_mask"], train_masks)["loss"].backward()
        optim.step()
    model.eval()
    test_clips, test_masks = _composed_clips(range(100, 104))
    with torch.no_grad():
        with attention_impl(precision="fp32"):
            exact = model(test_clips)["pred_mask"].sigmoid()
        with attention_impl(precision="bf16"):
            low = model(test_clips)["pred_mask"].sigmoid()
    assert not torch.equal(exact, low)  # the bf16 path did run
    assert (exact - low).abs().max().item() < 2e-2
    assert exact.std() > 1e-3  # trained: the maps are not constant
    assert abs(_pixel_f1(exact, test_masks) - _pixel_f1(low, test_masks)) < 0.01
