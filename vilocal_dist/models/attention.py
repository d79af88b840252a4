"""Global self-attention kernels for the UniFormer's SABlocks: ``softmax(q kᵀ / √d) v``.

q, k, v are ``[B, heads, N, d]``. `attention` picks one of four computations of the same function:

- **SDPA** (default): PyTorch's fused kernel, no dropout on CPU.
- **Dropout attention on CPU** (training): PyTorch's fused CPU kernel has no dropout, and its math
  fallback materialises N×N scores, draws the dropout mask with ``bernoulli_`` on fp32 and runs
  per-call ``isneginf``/``all``/``where`` guards (43 % and 4 % of a ViLocal step). `_DropoutAttention`
  processes ``chunk`` query rows at a time, draws the mask from 64-bit integer words (two 32-bit
  uniforms per draw, see `drop_mask`), saves only that bool mask for backward and recomputes the
  scores there, so at most ``chunk × N`` fp32 scores exist at once.
- **Blocked bf16 attention** (inference, where bf16 is native): 64-query blocks whose bf16 scores
  stay in cache; a bf16 GEMM runs ~4× the fp32 rate on CPUs with AVX-512 BF16/AMX but ~400× below
  it on CPUs without (emulated), hence `bf16_native`.
- **The authors' formulation** (`attention_impl("authors")`, for the benchmark baseline): explicit
  ``softmax(q kᵀ · scale)``, dropout, ``× v`` on the whole N×N matrix.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

#: Query rows per chunk of the CPU dropout attention (chunk × N fp32 scores live at once).
ATTENTION_CHUNK = 512
#: Query rows per block of the bf16 inference attention (64 × 6,480 bf16 scores: 0.8 MB per head).
BF16_BLOCK = 64
IMPLS = ("fast", "authors")
PRECISIONS = ("auto", "fp32", "bf16")

_impl = "fast"
_precision = "auto"


@contextlib.contextmanager
def attention_impl(impl: str = "fast", precision: str = "auto") -> Iterator[None]:
    """Within the block, compute attention as ``impl`` ("fast" or the "authors'" explicit
    softmax(QKᵀ)V) and inference attention on CPU in ``precision`` ("auto": bf16 where `bf16_native`)."""
    global _impl, _precision
    if impl not in IMPLS or precision not in PRECISIONS:
        raise ValueError(f"attention impl must be one of {IMPLS} and precision one of {PRECISIONS}")
    saved = _impl, _precision
    _impl, _precision = impl, precision
    try:
        yield
    finally:
        _impl, _precision = saved


@functools.lru_cache(maxsize=1)
def bf16_native() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16 or AMX-BF16 in /proc/cpuinfo)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return False
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def use_bf16_inference(device: torch.device) -> bool:
    """Whether CPU inference attention runs in bf16 under the current `attention_impl` setting."""
    if device.type != "cpu" or _precision == "fp32":
        return False
    return _precision == "bf16" or bf16_native()


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A bool tensor, True with probability ``p`` independently per element (True = dropped).

    Each element compares one uniform 32-bit integer with ``round(p · 2³²)``, so P(True) is ``p``
    to within 2⁻³³ (finer than fp32 ``rand() < p``). Two of them come from one 64-bit draw: half as
    many generator calls as ``rand``, and no fp32 tensor (3× faster than ``bernoulli_`` on fp32).
    """
    n = 1
    for s in shape:
        n *= s
    words = torch.empty((n + 1) // 2, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)  # the full 64-bit range
    threshold = round(p * 2**32) - 2**31
    return (words.view(torch.int32)[:n] < threshold).view(shape)


class _DropoutAttention(torch.autograd.Function):
    """softmax(q kᵀ·s) with dropout, × v, chunked over queries; backward recomputes the scores.

    Saved for backward: q, k, v and the bool drop mask (1 byte per score instead of the 9 of the
    math kernel's probabilities, dropped probabilities and mask). The 1/(1−p) rescaling is
    applied to v (and to the output gradient) instead of to the N×N probabilities.
    """

    @staticmethod
    def forward(ctx, q, k, v, p, chunk, generator):  # type: ignore[override]
        scale = q.shape[-1] ** -0.5
        k_t, v_kept = k.transpose(-1, -2), v * (1.0 / (1.0 - p))
        outs, masks = [], []
        for q_part in (q * scale).split(chunk, dim=2):
            probs = torch.softmax(q_part @ k_t, dim=-1)
            drop = drop_mask(probs.shape, p, probs.device, generator)
            outs.append(probs.masked_fill_(drop, 0.0) @ v_kept)
            masks.append(drop)
        ctx.save_for_backward(q, k, v, torch.cat(masks, dim=2))
        ctx.p, ctx.chunk, ctx.scale = p, chunk, scale
        return torch.cat(outs, dim=2)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, drop = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        grad_kept = grad_out * (1.0 / (1.0 - ctx.p))
        k_t, v_t = k.transpose(-1, -2), v.transpose(-1, -2)
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        q_scaled = q * scale
        for start in range(0, q.shape[2], chunk):
            rows = slice(start, start + chunk)
            probs = torch.softmax(q_scaled[:, :, rows] @ k_t, dim=-1)
            dropped = drop[:, :, rows]
            grad_v += probs.masked_fill(dropped, 0.0).transpose(-1, -2) @ grad_kept[:, :, rows]
            grad_probs = (grad_kept[:, :, rows] @ v_t).masked_fill_(dropped, 0.0)
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
            grad_q[:, :, rows] = grad_scores @ k * scale
            grad_k += grad_scores.transpose(-1, -2) @ q_scaled[:, :, rows]
        return grad_q, grad_k, grad_v, None, None, None


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block: int = BF16_BLOCK,
                      dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Inference attention in ``dtype`` with ``block`` queries at a time; returns q's dtype.

    Small blocks keep each ``block × N`` score tile in cache, so the GEMMs rather than the softmax
    traffic set the pace; the softmax runs in ``dtype`` too (an fp32 softmax was slower than SDPA).
    """
    scale = q.shape[-1] ** -0.5
    q_low, k_t, v_low = (q * scale).to(dtype), k.to(dtype).transpose(-1, -2), v.to(dtype)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for start in range(0, q.shape[2], block):
        rows = slice(start, start + block)
        out[:, :, rows] = torch.softmax(q_low[:, :, rows] @ k_t, dim=-1) @ v_low
    return out


def authors_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """The authors' formulation: ``attn = softmax(q kᵀ · scale)``, dropout, ``attn @ v``."""
    attn = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
    return F.dropout(attn, dropout_p, training=dropout_p > 0) @ v


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float = 0.0,
    chunk: int | None = None, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` with attention dropout ``dropout_p``; q, k, v: ``[B, heads, N, d]``.

    CUDA and dropout-free fp32 CPU attention take SDPA's fused kernels; CPU dropout takes
    `_DropoutAttention` (``chunk`` query rows at a time, default `ATTENTION_CHUNK`); gradient-free
    CPU attention takes `blocked_attention` in bf16 when `use_bf16_inference` says so.
    """
    if _impl == "authors":
        return authors_attention(q, k, v, dropout_p)
    on_cpu = q.device.type == "cpu"
    if dropout_p > 0 and on_cpu:
        return _DropoutAttention.apply(q, k, v, dropout_p, chunk or ATTENTION_CHUNK, generator)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if on_cpu and not grad and q.dtype == torch.float32 and use_bf16_inference(q.device):
        return blocked_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
