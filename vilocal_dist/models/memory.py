"""How much memory a ViLocal training step needs, and the cheapest checkpointing that fits a budget.

``--checkpoint auto`` recomputes blocks in backward only when storing their activations would not
fit: per-block recomputation cost 31 % of a batch-1 step at 5×120×216, where memory is not short,
but the paper-resolution batch-2 step stores ~14 GiB of activations without it.

The estimate counts what autograd keeps per block, in fp32 values per token and channel (measured
once on the `vilocal` preset, see `CBLOCK_VALUES`), plus the attention's 1-byte dropout mask per
score, the weights with their gradients and AdamW moments, and the interpreter with torch loaded.
"""

from __future__ import annotations

import torch

from vilocal_dist.models.attention import ATTENTION_CHUNK
from vilocal_dist.models.vilocal import ViLocalConfig, ViLocalEncoder, count_parameters

CHECKPOINT_MODES = ("auto", "none", "attention", "all")
#: The default budget: the paper-resolution batch-2 step must fit a machine with 8 GiB.
DEFAULT_BUDGET_GIB = 8.0
#: fp32 values autograd keeps per token and channel inside a CBlock / an SABlock (without the
#: attention scores): inputs of the norms, linears, depthwise convolutions, GELU and dropouts.
CBLOCK_VALUES, SABLOCK_VALUES = 26, 22
#: Resident memory of a process with torch imported and the model built, before any step.
BASE_BYTES = 450 * 2**20


def _stages(config: ViLocalConfig, frames: int, size: tuple[int, int]) -> list[tuple[int, int, int, bool]]:
    """Per stage: (tokens per sample, channels, blocks, is_attention)."""
    t, h, w = frames, size[0], size[1]
    out = []
    for i, (depth, width) in enumerate(zip(config.depths, config.widths)):
        t = (t - 1) // config.time_strides[i] + 1
        h, w = h // config.space_strides[i], w // config.space_strides[i]
        out.append((t * h * w, width, depth, i >= config.num_conv_stages))
    return out


def step_bytes(config: ViLocalConfig, batch: int, frames: int, size: tuple[int, int], mode: str,
               params: int) -> int:
    """Estimated peak bytes of one stage-1 CPU training step with checkpointing ``mode``
    ("none", "attention" or "all"); ``params``: the encoder's parameter count."""
    stored, replay = 0, 0  # kept until backward; the largest block re-run at once in backward
    for tokens, width, depth, is_attention in _stages(config, frames, size):
        heads = width // config.head_dim
        scores = batch * heads * tokens * tokens if is_attention and config.attn_drop_rate > 0 else 0
        values = SABLOCK_VALUES if is_attention else CBLOCK_VALUES
        block = 4 * values * batch * tokens * width + scores  # the mask: one byte per score
        # Backward's working set: a few fp32 score chunks of ATTENTION_CHUNK query rows.
        replay = max(replay, 4 * 4 * batch * heads * min(ATTENTION_CHUNK, tokens) * tokens if scores else 0)
        recompute = mode == "all" or (mode == "attention" and is_attention)
        if recompute:
            stored += depth * 4 * batch * tokens * width  # only each block's input
            replay = max(replay, block)
        else:
            stored += depth * block
    return BASE_BYTES + 16 * params + stored + replay


def choose_checkpointing(config: ViLocalConfig, batch: int, frames: int, size: tuple[int, int],
                         budget_bytes: float, params: int) -> str:
    """The least recomputation ("none", then "attention", then "all") whose estimate fits."""
    for mode in ("none", "attention"):
        if step_bytes(config, batch, frames, size, mode, params) <= budget_bytes:
            return mode
    return "all"


def checkpoint_overrides(mode: str, config: ViLocalConfig, batch: int, frames: int,
                         size: tuple[int, int], budget_bytes: float) -> dict[str, bool]:
    """Config overrides for checkpointing ``mode``; "auto" resolves through `choose_checkpointing`."""
    if mode == "auto":
        with torch.device("meta"):  # shapes only: no weights allocated or initialised
            params = count_parameters(ViLocalEncoder(config))
        mode = choose_checkpointing(config, batch, frames, size, budget_bytes, params)
    return {"checkpoint_attention": mode == "attention", "checkpoint_all": mode == "all"}
