"""A 3-D UniFormer encoder: convolutional CBlocks in early stages, global-attention SABlocks later.

Shape path with the ViLocal defaults for ``[B, 3, 5, 240, 432]``::

    embed 1  Conv3d k(3,2,2) s(2,2,2) p(1,0,0)  -> [B,  32, 3, 120, 216]   5 CBlocks
    embed 2  Conv3d k(3,2,2) s(2,2,2) p(1,0,0)  -> [B,  64, 2,  60, 108]   8 CBlocks
    embed 3  Conv3d k3 s(2,1,1) p1              -> [B, 128, 1,  60, 108]  20 SABlocks
    embed 4  Conv3d k3 s(2,1,1) p1              -> [B, 256, 1,  60, 108]   7 SABlocks
    mean over time (T is 1 here)                -> [B, 256, 60, 108]

Every embedding uses temporal kernel 3 / padding 1; a spatial stride s > 1 uses kernel s and no
padding (non-overlapping patches), stride 1 uses kernel 3 and padding 1. Time collapses through
the strided convolutions (``t -> (t - 1) // s + 1``); whatever time length is left at the end is
averaged (with the defaults, any T from 1 to 16 ends at 1, so the average is a plain squeeze).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from vilocal_dist.models.attention import attention


class _DepthwiseConv3dFunction(torch.autograd.Function):
    """Stride-1 depthwise Conv3d whose weight gradient is one large grouped convolution.

    PyTorch's CPU backward for depthwise 3-D convolutions is slow for the weight and bias
    gradients: 2.2 s for a 5×5×5 kernel on [2, 32, 3, 120, 216] (the input gradient takes 0.14 s).
    The weight gradient is a correlation of the padded input with the output gradient per
    (sample, channel); written as ``conv3d(x_pad[1, B·C, ...], grad[B·C, 1, ...], groups=B·C)`` it
    takes ~0.2 s, and the bias gradient is a plain sum. Forward and input gradient use stock ops.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return F.conv3d(x, weight, bias, padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        channels, pad = weight.shape[0], list(ctx.padding)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1, 1], pad, [1, 1, 1], False, [0, 0, 0], channels,
                [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            b = x.shape[0]
            x_pad = F.pad(x, (pad[2], pad[2], pad[1], pad[1], pad[0], pad[0]))
            x_pad = rearrange(x_pad, "b c t h w -> 1 (b c) t h w")
            kernels = rearrange(grad_out, "b c t h w -> (b c) 1 t h w")
            per_sample = F.conv3d(x_pad, kernels, groups=b * channels)  # [1, B·C, kt, kh, kw]
            grad_w = rearrange(per_sample, "1 (b c) t h w -> b c 1 t h w", b=b).sum(dim=0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(dim=(0, 2, 3, 4))
        return grad_x, grad_w, grad_b, None


class DepthwiseConv3d(nn.Conv3d):
    """``nn.Conv3d(dim, dim, k, padding=k // 2, groups=dim)`` with a fast CPU backward (same
    parameters and results; other devices use the stock autograd)."""

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_grad_enabled():
            return _DepthwiseConv3dFunction.apply(x, self.weight, self.bias, self.padding)
        return super().forward(x)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W] -> [B, T, H, W, C]`` (a view when x is in channels_last_3d format)."""
    return rearrange(x, "b c t h w -> b t h w c")


def to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, W, C] -> [B, C, T, H, W]``, always a view (in channels_last_3d format)."""
    return rearrange(x, "b t h w c -> b c t h w")


class Mlp(nn.Module):
    """Token MLP on ``[B, N, C]``: Linear -> GELU -> Linear, with dropout."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SelfAttention(nn.Module):
    """Global multi-head self-attention over all tokens, ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, dim: int, heads: int, *, qkv_bias: bool, attn_drop: float, proj_drop: float):
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        out = attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class CBlock(nn.Module):
    """Convolution block on ``[B, C, T, H, W]`` (shape preserved).

    x += dwconv3(x)
    x += DropPath(1×1 conv ∘ dwconv5 ∘ 1×1 conv ∘ BN)(x)
    x += DropPath(MLP ∘ BN)(x)

    The 1×1×1 convolutions (here and in the MLP) are ``nn.Linear`` over the channel axis: the same
    parameters and result, but a plain GEMM on the channels-last layout the encoder keeps, where
    PyTorch's CPU depthwise 3-D convolutions are also 3-6× faster than on channels-first tensors.
    """

    def __init__(
        self, dim: int, *, mlp_ratio: float, drop: float, drop_path: float, local_kernel: int
    ) -> None:
        super().__init__()
        self.pos_embed = DepthwiseConv3d(dim, 3)
        self.norm1 = nn.BatchNorm3d(dim)
        self.conv1 = nn.Linear(dim, dim)
        self.local = DepthwiseConv3d(dim, local_kernel)
        self.conv2 = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.BatchNorm3d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        y = to_channels_first(self.conv1(to_channels_last(self.norm1(x))))
        y = self.conv2(to_channels_last(self.local(y)))
        x = x + self.drop_path(to_channels_first(y))
        return x + self.drop_path(to_channels_first(self.mlp(to_channels_last(self.norm2(x)))))


class SABlock(nn.Module):
    """Global self-attention block on ``[B, C, T, H, W]`` (shape kept); attends over all T·H·W."""

    def __init__(
        self, dim: int, *, heads: int, mlp_ratio: float, qkv_bias: bool, drop: float,
        attn_drop: float, drop_path: float,
    ) -> None:
        super().__init__()
        self.pos_embed = DepthwiseConv3d(dim, 3)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(
            dim, heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        t, h, w = x.shape[2:]
        tokens = rearrange(x, "b c t h w -> b (t h w) c")  # a view in channels_last_3d
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens)))
        tokens = tokens + self.drop_path(self.mlp(self.norm2(tokens)))
        return rearrange(tokens, "b (t h w) c -> b c t h w", t=t, h=h, w=w)


class PatchEmbed3d(nn.Module):
    """Strided Conv3d then LayerNorm over channels: ``[B, Cin, T, H, W] -> [B, Cout, T', H', W']``.

    The output is in channels_last_3d memory format, which every block after it keeps.
    """

    def __init__(self, in_dim: int, out_dim: int, *, time_stride: int, space_stride: int) -> None:
        super().__init__()
        k_s, p_s = (space_stride, 0) if space_stride > 1 else (3, 1)
        self.proj = nn.Conv3d(
            in_dim, out_dim, kernel_size=(3, k_s, k_s), stride=(time_stride, space_stride,
            space_stride), padding=(1, p_s, p_s),
        )
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_channels_first(self.norm(to_channels_last(self.proj(x))))


@contextlib.contextmanager
def _isolated_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """During a checkpoint recomputation, let BatchNorm update throw-away copies of its stats.

    Without this, a training-mode BatchNorm inside a checkpointed block would update its running
    mean/var twice per step (forward and recompute). Swapping in clones (instead of restoring the
    values in place) leaves the real buffers untouched, so no tensor saved for backward changes.
    """
    saved = []
    for bn in module.modules():
        is_bn = isinstance(bn, nn.modules.batchnorm._BatchNorm)
        if is_bn and bn.training and bn.track_running_stats:
            saved.append((bn, bn.running_mean, bn.running_var, bn.num_batches_tracked))
            bn.running_mean = bn.running_mean.clone()
            bn.running_var = bn.running_var.clone()
            bn.num_batches_tracked = bn.num_batches_tracked.clone()
    try:
        yield
    finally:
        for bn, mean, var, count in saved:
            bn.running_mean, bn.running_var, bn.num_batches_tracked = mean, var, count


class UniFormer3D(nn.Module):
    """3-D UniFormer: ``forward(x: [B, Cin, T, H, W]) -> [B, widths[-1], H/S, W/S]``.

    S = ∏ space_strides (4 by default).

    Stages ``< num_conv_stages`` use CBlocks, the rest SABlocks with ``width // head_dim`` heads.
    Drop-path rates rise linearly from 0 to ``drop_path_rate`` over all blocks. With
    ``checkpoint_attention`` each SABlock is recomputed in backward instead of storing its
    activations; ``checkpoint_all`` does the same for every block.
    """

    def __init__(
        self, *, in_chans: int, depths: tuple[int, ...], widths: tuple[int, ...], head_dim: int,
        mlp_ratio: float, qkv_bias: bool, num_conv_stages: int, time_strides: tuple[int, ...],
        space_strides: tuple[int, ...], drop_rate: float, attn_drop_rate: float,
        drop_path_rate: float, local_kernel: int, checkpoint_attention: bool = False,
        checkpoint_all: bool = False,
    ) -> None:
        super().__init__()
        n_stages = len(depths)
        if not (len(widths) == len(time_strides) == len(space_strides) == n_stages):
            raise ValueError("depths, widths, time_strides and space_strides need equal lengths")
        self.space_stride = 1
        for s in space_strides:
            self.space_stride *= s
        self.time_strides = tuple(time_strides)
        self.out_dim = widths[-1]
        self.checkpoint_attention = checkpoint_attention
        self.checkpoint_all = checkpoint_all

        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear 0 -> max
        self.embeds = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.norms = nn.ModuleList()
        prev = in_chans
        for i, (depth, width) in enumerate(zip(depths, widths)):
            self.embeds.append(PatchEmbed3d(
                prev, width, time_stride=time_strides[i], space_stride=space_strides[i]
            ))
            block_rates, rates = rates[:depth], rates[depth:]
            if i < num_conv_stages:
                blocks = [
                    CBlock(width, mlp_ratio=mlp_ratio, drop=drop_rate, drop_path=r,
                           local_kernel=local_kernel)
                    for r in block_rates
                ]
            else:
                blocks = [
                    SABlock(width, heads=width // head_dim, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                            drop=drop_rate, attn_drop=attn_drop_rate, drop_path=r)
                    for r in block_rates
                ]
            self.stages.append(nn.ModuleList(blocks))
            self.norms.append(nn.BatchNorm3d(width))
            prev = width
        self.pos_drop = nn.Dropout(drop_rate)
        for block in self.modules():
            if isinstance(block, SABlock):
                block.apply(_init_weights)

    def output_time(self, frames: int) -> int:
        """Time length before the final average, for an input of ``frames`` frames."""
        for s in self.time_strides:
            frames = (frames - 1) // s + 1
        return frames

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        wanted = self.checkpoint_all or (self.checkpoint_attention and isinstance(block, SABlock))
        if not (wanted and torch.is_grad_enabled()):
            return block(x)
        # Non-reentrant checkpointing keeps the RNG state, so dropout and drop path draw the same
        # masks on recomputation and the gradients equal those of the plain forward.
        return checkpoint(
            block, x, use_reentrant=False,
            context_fn=lambda: (contextlib.nullcontext(), _isolated_batchnorm_stats(block)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (embed, blocks, norm) in enumerate(zip(self.embeds, self.stages, self.norms)):
            x = embed(x)
            if i == 0:
                x = self.pos_drop(x)
            for block in blocks:
                x = self._run_block(block, x)
            x = norm(x)
        return x.mean(dim=2)  # [B, C, T', H', W'] -> [B, C, H', W']; T' is 1 for the defaults


def _init_weights(m: nn.Module) -> None:
    """Transformer init for the attention blocks. Everything else keeps PyTorch's defaults, which
    for the CBlocks' Linear layers equal those of the 1×1×1 convolutions they stand for."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
