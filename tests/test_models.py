"""ViLocal models: shape path, parameter counts, every preset, attention, checkpointing."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import warnings

import pytest
import torch

from vilocal_dist.errors import ConfigError
from vilocal_dist.models import (
    ViLocalConfig,
    autocast_context,
    count_parameters,
    create_model,
    get_config,
    list_models,
)
from vilocal_dist.models.uniformer import DepthwiseConv3d, SelfAttention, attention

NO_DROPOUT = dict(drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)


def test_presets_registered() -> None:
    assert {"vilocal", "vilocal_small", "vilocal_tiny"} <= set(list_models())


def test_vilocal_parameter_counts_match_the_authors() -> None:
    model = create_model("vilocal")
    assert count_parameters(model.encoder) == pytest.approx(11.2e6, rel=0.02)
    assert count_parameters(model.decoder) == pytest.approx(33e3, rel=0.02)


def test_vilocal_shape_path_at_full_size() -> None:
    """The authors' shape path at 5×240×432, traced on the meta device (shapes only, no compute)."""
    with torch.device("meta"):
        model = create_model("vilocal")
        backbone = model.encoder.backbone
        x = torch.empty(1, 3, 5, 240, 432)
        shapes = []
        for embed, blocks in zip(backbone.embeds, backbone.stages):
            x = embed(x)
            shapes.append(list(x.shape))
            x = blocks[0](x)
        out = model(torch.empty(1, 3, 5, 240, 432))
    assert shapes == [[1, 32, 3, 120, 216], [1, 64, 2, 60, 108], [1, 128, 1, 60, 108],
                      [1, 256, 1, 60, 108]]
    assert list(out["features"].shape) == [1, 256, 60, 108]
    assert list(out["pred_mask"].shape) == [1, 1, 240, 432]
    assert [len(s) for s in backbone.stages] == [5, 8, 20, 7]
    heads = [blocks[0].attn.heads for blocks in backbone.stages[2:]]
    assert heads == [2, 4]


@pytest.mark.slow
def test_vilocal_real_forward_at_full_size() -> None:
    model = create_model("vilocal").eval()
    with torch.inference_mode():
        out = model.encoder(torch.rand(1, 3, 5, 240, 432))
    assert list(out.shape) == [1, 256, 60, 108]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    # Dropouts off so every parameter must receive a non-zero gradient (a dropped drop-path
    # branch would legitimately get zeros); the dropout paths are exercised separately.
    model = create_model(name, **NO_DROPOUT).train()
    clip = torch.rand(2, 3, 5, 16, 24)
    out = model(clip)
    c = model.config.widths[-1]
    assert list(out["features"].shape) == [2, c, 4, 6]
    assert list(out["pred_mask"].shape) == [2, 1, 16, 24]
    assert torch.isfinite(out["pred_mask"]).all() and torch.isfinite(out["features"]).all()
    (out["pred_mask"].square().mean() + out["features"].square().mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


def test_train_mode_with_dropouts_is_finite() -> None:
    torch.manual_seed(0)
    model = create_model("vilocal_tiny", drop_rate=0.3, attn_drop_rate=0.2, drop_path_rate=0.3)
    out = model.train()(torch.rand(2, 3, 5, 32, 48))
    out["pred_mask"].mean().backward()
    assert torch.isfinite(out["pred_mask"]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("frames", [1, 3, 5, 9])
def test_time_collapses_for_other_clip_lengths(frames: int) -> None:
    model = create_model("vilocal_tiny").eval()
    assert model.encoder.backbone.output_time(frames) == 1
    with torch.no_grad():
        assert list(model.encoder(torch.rand(1, 3, frames, 16, 24)).shape) == [1, 64, 4, 6]


def test_sdpa_equals_explicit_softmax() -> None:
    torch.manual_seed(0)
    attn = SelfAttention(16, 2, qkv_bias=True, attn_drop=0.0, proj_drop=0.0).eval()
    x = torch.randn(2, 10, 16)
    q, k, v = attn.qkv(x).reshape(2, 10, 3, 2, 8).permute(2, 0, 3, 1, 4)  # [3, b, h, n, d]
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    expected = attn.proj((weights @ v).permute(0, 2, 1, 3).reshape(2, 10, 16))
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_chunked_attention_equals_one_call() -> None:
    """The CPU dropout kernel (here with p = 0), chunk by chunk, equals one fused SDPA call."""
    from vilocal_dist.models.attention import _DropoutAttention

    q, k, v = torch.randn(3, 2, 2, 37, 8, requires_grad=True).unbind(0)
    full = attention(q, k, v)
    chunked = _DropoutAttention.apply(q, k, v, 0.0, 5, None)
    assert torch.allclose(full, chunked, atol=1e-6)
    g_full = torch.autograd.grad(full.sum(), (q, k, v))
    g_chunk = torch.autograd.grad(chunked.sum(), (q, k, v))
    for a, b in zip(g_full, g_chunk):
        assert torch.allclose(a, b, atol=1e-5)


def test_chunked_attention_with_dropout_keeps_rows_stochastic() -> None:
    """With v = 1, each output row is the sum of its dropped-out, rescaled attention weights."""
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 2, 600, 4).unbind(0)
    v = torch.ones(1, 2, 600, 4)
    out = attention(q, k, v, dropout_p=0.5, chunk=64)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, torch.ones_like(out))  # dropout did act
    assert out.mean().item() == pytest.approx(1.0, abs=0.05)  # but is unbiased


@pytest.mark.parametrize("kernel", [3, 5])
def test_depthwise_conv_fast_backward_matches_stock(kernel: int) -> None:
    torch.manual_seed(0)
    fast = DepthwiseConv3d(4, kernel).double()
    stock = torch.nn.Conv3d(4, 4, kernel, padding=kernel // 2, groups=4).double()
    stock.load_state_dict(fast.state_dict())
    x = torch.randn(2, 4, 3, 6, 7, dtype=torch.float64)
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        xs = [x.clone().contiguous(memory_format=layout).requires_grad_(True) for _ in range(2)]
        grad = torch.randn(2, 4, 3, 6, 7, dtype=torch.float64)
        fast.zero_grad(), stock.zero_grad()
        fast(xs[0]).backward(grad)
        stock(xs[1]).backward(grad)
        assert torch.allclose(xs[0].grad, xs[1].grad)
        assert torch.allclose(fast.weight.grad, stock.weight.grad)
        assert torch.allclose(fast.bias.grad, stock.bias.grad)
    small = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast, (small,))


def _grads(model: torch.nn.Module, clip: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    out = model(clip)
    (out["pred_mask"].mean() + out["features"].square().mean()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_gives_identical_gradients_eval() -> None:
    torch.manual_seed(0)
    plain = create_model("vilocal_tiny").eval()
    ckpt = create_model("vilocal_tiny", checkpoint_all=True).eval()
    ckpt.load_state_dict(plain.state_dict())
    clip = torch.rand(2, 3, 5, 16, 24)
    g_plain, g_ckpt = _grads(plain, clip, 0), _grads(ckpt, clip, 0)
    assert g_plain.keys() == g_ckpt.keys() and len(g_plain) == len(list(plain.parameters()))
    for name in g_plain:
        assert torch.allclose(g_plain[name], g_ckpt[name], atol=1e-6), name


@pytest.mark.parametrize("flag", ["checkpoint_all", "checkpoint_attention"])
def test_checkpointing_in_train_mode_same_gradients_and_batchnorm_stats(flag: str) -> None:
    """Dropout masks are replayed on recomputation and BatchNorm stats are updated only once."""
    torch.manual_seed(0)
    cfg = dict(drop_rate=0.2, attn_drop_rate=0.2, drop_path_rate=0.2)
    plain = create_model("vilocal_tiny", **cfg).train()
    ckpt = create_model("vilocal_tiny", **cfg, **{flag: True}).train()
    ckpt.load_state_dict(plain.state_dict())
    clip = torch.rand(2, 3, 5, 16, 24)
    g_plain, g_ckpt = _grads(plain, clip, 1), _grads(ckpt, clip, 1)
    for name in g_plain:
        assert torch.allclose(g_plain[name], g_ckpt[name], atol=1e-6), name
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values()):
        assert torch.equal(a, b), name  # running means/vars and num_batches_tracked
    assert plain.encoder.backbone.stages[0][0].norm1.num_batches_tracked.item() == 1


def test_chunked_attention_dropout_inside_checkpointed_blocks(monkeypatch) -> None:
    """CPU attention-dropout chunks replay the same masks inside a checkpointed block."""
    import vilocal_dist.models.attention as attention_module

    monkeypatch.setattr(attention_module, "ATTENTION_CHUNK", 7)  # 24 tokens -> 4 chunks
    torch.manual_seed(0)
    plain = create_model("vilocal_tiny", attn_drop_rate=0.3).train()
    ckpt = create_model("vilocal_tiny", attn_drop_rate=0.3, checkpoint_all=True).train()
    ckpt.load_state_dict(plain.state_dict())
    clip = torch.rand(2, 3, 5, 16, 24)
    g_plain, g_ckpt = _grads(plain, clip, 2), _grads(ckpt, clip, 2)
    for name in g_plain:
        assert torch.allclose(g_plain[name], g_ckpt[name], atol=1e-6), name


def test_use_hp3d_false_feeds_raw_frames() -> None:
    torch.manual_seed(0)
    with_hp = create_model("vilocal_tiny").eval()
    without = create_model("vilocal_tiny", use_hp3d=False).eval()
    without.load_state_dict(with_hp.state_dict())
    assert isinstance(without.encoder.hp3d, torch.nn.Identity)
    clip = torch.rand(1, 3, 5, 16, 24)
    with torch.no_grad():
        raw = without.encoder.backbone(clip)
        assert torch.allclose(without.encoder(clip), raw)
        assert not torch.allclose(with_hp.encoder(clip), raw)


def test_decoder_upsamples_with_align_corners() -> None:
    """align_corners=True keeps the corner values of the low-resolution logits exactly."""
    model = create_model("vilocal_tiny").eval()
    feats = torch.randn(1, 64, 4, 6)
    with torch.no_grad():
        logits = model.decoder(feats, (16, 24))
        low = model.decoder.head(model.decoder.act(model.decoder.norm(model.decoder.proj(feats))))
    assert list(logits.shape) == [1, 1, 16, 24]
    for (y, x), (ly, lx) in {(0, 0): (0, 0), (15, 23): (3, 5), (0, 23): (0, 5)}.items():
        assert logits[0, 0, y, x] == pytest.approx(low[0, 0, ly, lx].item(), abs=1e-5)


def test_rejects_sizes_not_divisible_by_four() -> None:
    model = create_model("vilocal_tiny")
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.rand(1, 3, 5, 18, 24))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model(torch.rand(1, 5, 16, 24))


def test_config_round_trip_and_json() -> None:
    cfg = get_config("vilocal_small", use_hp3d=False)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["depths"] == list(cfg.depths)
    assert ViLocalConfig.from_dict(data) == cfg
    with pytest.raises(Exception):
        cfg.head_dim = 3  # frozen


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(widths=(8, 16, 24, 64), head_dim=16), "not divisible by head_dim"),
        (dict(depths=(1, 1, 1)), "give one per stage"),
        (dict(drop_rate=1.0), "drop_rate"),
        (dict(local_kernel=4), "odd"),
        (dict(num_conv_stages=5), "num_conv_stages"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        get_config("vilocal_tiny", **overrides)


def test_unknown_names_suggest_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'vilocal_tiny'"):
        create_model("vilocal_tyni")
    with pytest.raises(ConfigError, match="did you mean 'head_dim'"):
        create_model("vilocal_tiny", head_dims=8)
    with pytest.raises(ConfigError, match="did you mean 'use_hp3d'"):
        ViLocalConfig.from_dict({"use_hp3": False})


def test_autocast_context() -> None:
    assert isinstance(autocast_context("cpu"), contextlib.nullcontext)
    with warnings.catch_warnings():  # a CPU-only build warns that CUDA autocast is disabled
        warnings.simplefilter("ignore")
        ctx = autocast_context(torch.device("cuda", 0))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


def test_model_deepcopies_and_state_dict_has_no_hp3d_kernel() -> None:
    model = create_model("vilocal_tiny")
    assert not any("hp3d" in k for k in model.state_dict())
    clone = copy.deepcopy(model)
    assert clone.config == model.config


def test_benchmarks_report_speed_and_memory() -> None:
    from vilocal_dist.bench.model import inference_benchmark, train_step_benchmark

    train = train_step_benchmark("vilocal_tiny", 2, (16, 24), steps=1, checkpoint="all",
                                 isolate=False)
    assert train["step_s"] > 0 and train["peak_rss_mb"] >= train["baseline_rss_mb"] > 0
    assert math.isfinite(train["loss"])
    infer = inference_benchmark("vilocal_tiny", 1, (16, 24), repeats=1)  # in a subprocess
    assert infer["clips_per_s"] > 0 and infer["peak_rss_mb"] > 0
    assert infer["preset"] == "vilocal_tiny"
