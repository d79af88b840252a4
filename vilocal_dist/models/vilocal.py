"""The ViLocal detector: HP3D -> 3-D UniFormer encoder -> light decoder; its config and presets.

Interface (timm-like)::

    model.encoder(clip: [B, 3, T, H, W] in [0, 1]) -> features [B, 256, H/4, W/4]
    model.decoder(features, out_size=(H, W))        -> logits [B, 1, H, W]
    model(clip) -> {"pred_mask": logits, "features": features}

Stage 1 trains ``model.encoder`` with the contrastive loss; stage 2 freezes it and trains
``model.decoder`` with the focal loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, ContextManager

import torch
from torch import nn

from vilocal_dist.errors import ConfigError
from vilocal_dist.models.decoder import LightDecoder
from vilocal_dist.models.hp3d import HP3D
from vilocal_dist.models.uniformer import UniFormer3D


@dataclass(frozen=True)
class ViLocalConfig:
    """Everything that defines a ViLocal network; saved inside every checkpoint (``to_dict``).

    Defaults are the authors' configuration (reference-code.md): UniFormer-B depths, widths
    32/64/128/256, head dim 64, dropout 0.3 / attention dropout 0.2 / drop path 0.3.
    """

    depths: tuple[int, ...] = (5, 8, 20, 7)
    widths: tuple[int, ...] = (32, 64, 128, 256)
    head_dim: int = 64
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_conv_stages: int = 2  # stages before this index use CBlocks, the rest SABlocks
    time_strides: tuple[int, ...] = (2, 2, 2, 2)
    space_strides: tuple[int, ...] = (2, 2, 1, 1)
    local_kernel: int = 5  # CBlock depthwise aggregation kernel
    in_chans: int = 3
    drop_rate: float = 0.3
    attn_drop_rate: float = 0.2
    drop_path_rate: float = 0.3
    decoder_hidden: int = 128
    use_hp3d: bool = True  # False = the paper's "w/o HP3D" ablation: raw RGB into the encoder
    checkpoint_attention: bool = False  # recompute SABlocks in backward (saves memory)
    checkpoint_all: bool = False  # recompute every block in backward (saves most memory)

    def __post_init__(self) -> None:
        for name in ("depths", "widths", "time_strides", "space_strides"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        n = len(self.depths)
        if n == 0:
            raise ConfigError("depths must name at least one stage")
        for name in ("widths", "time_strides", "space_strides"):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f"{name} has {len(getattr(self, name))} entries but depths has {n}; "
                    "give one per stage"
                )
        for name in ("depths", "widths", "time_strides", "space_strides"):
            if any(int(v) != v or v < 1 for v in getattr(self, name)):
                raise ConfigError(f"{name} must be positive integers, got {getattr(self, name)}")
        if not 0 <= self.num_conv_stages <= n:
            raise ConfigError(f"num_conv_stages must be in [0, {n}], got {self.num_conv_stages}")
        if self.head_dim < 1:
            raise ConfigError(f"head_dim must be >= 1, got {self.head_dim}")
        for i in range(self.num_conv_stages, n):
            if self.widths[i] % self.head_dim != 0:
                raise ConfigError(
                    f"attention stage {i + 1} has width {self.widths[i]}, not divisible by "
                    f"head_dim {self.head_dim} (heads = width / head_dim)"
                )
        if self.local_kernel < 1 or self.local_kernel % 2 == 0:
            raise ConfigError(f"local_kernel must be odd and positive, got {self.local_kernel}")
        if self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.in_chans < 1 or self.decoder_hidden < 1:
            raise ConfigError("in_chans and decoder_hidden must be >= 1")

    @property
    def space_stride(self) -> int:
        """Input H and W must be divisible by this; features are H / space_stride."""
        out = 1
        for s in self.space_strides:
            out *= s
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict (tuples become lists)."""
        fields = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ViLocalConfig":
        """Inverse of `to_dict`; unknown keys raise ConfigError naming the closest field."""
        check_fields(data)
        return cls(**data)

    def replace(self, **overrides: Any) -> "ViLocalConfig":
        """A copy with some fields changed (validated like the constructor)."""
        check_fields(overrides)
        return dataclasses.replace(self, **overrides)


def check_fields(data: dict[str, Any]) -> None:
    """Raise ConfigError for keys that are not ViLocalConfig fields, suggesting the closest."""
    known = [f.name for f in dataclasses.fields(ViLocalConfig)]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            raise ConfigError(f"unknown ViLocal config field {key!r}{hint}")


class ViLocalEncoder(nn.Module):
    """HP3D (optional) + UniFormer3D: ``[B, 3, T, H, W] -> [B, widths[-1], H/4, W/4]``."""

    def __init__(self, config: ViLocalConfig) -> None:
        super().__init__()
        self.config = config
        self.hp3d = HP3D(config.in_chans) if config.use_hp3d else nn.Identity()
        self.backbone = UniFormer3D(
            in_chans=config.in_chans, depths=config.depths, widths=config.widths,
            head_dim=config.head_dim, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
            num_conv_stages=config.num_conv_stages, time_strides=config.time_strides,
            space_strides=config.space_strides, drop_rate=config.drop_rate,
            attn_drop_rate=config.attn_drop_rate, drop_path_rate=config.drop_path_rate,
            local_kernel=config.local_kernel, checkpoint_attention=config.checkpoint_attention,
            checkpoint_all=config.checkpoint_all,
        )

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if clip.dim() != 5 or clip.shape[1] != cfg.in_chans:
            raise ValueError(f"clip must be [B, {cfg.in_chans}, T, H, W], got {list(clip.shape)}")
        h, w = clip.shape[-2:]
        if h % cfg.space_stride or w % cfg.space_stride:
            raise ValueError(
                f"clip height and width must be divisible by {cfg.space_stride}, got {h}×{w} "
                "(resize to e.g. 240×432)"
            )
        return self.backbone(self.hp3d(clip))


class ViLocal(nn.Module):
    """The full detector: ``forward(clip [B,3,T,H,W]) -> {"pred_mask": logits [B,1,H,W],
    "features": [B,C,H/4,W/4]}``."""

    def __init__(self, config: ViLocalConfig | None = None) -> None:
        super().__init__()
        self.config = config or ViLocalConfig()
        self.encoder = ViLocalEncoder(self.config)
        self.decoder = LightDecoder(self.config.widths[-1], self.config.decoder_hidden)

    def forward(self, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoder(clip)
        return {"pred_mask": self.decoder(features, clip.shape[-2:]), "features": features}


def autocast_context(device: torch.device | str) -> ContextManager:
    """bf16 autocast on CUDA (HP3D and the losses compute in fp32 regardless), a no-op elsewhere."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (buffers such as the HP3D kernel are not counted)."""
    return sum(p.numel() for p in module.parameters())


#: Named configurations. `vilocal` is the authors' network; the others are small on purpose.
PRESETS: dict[str, ViLocalConfig] = {
    "vilocal": ViLocalConfig(),
    # For the laptop demo: minutes of CPU training at ~96×160 still learn something.
    "vilocal_small": ViLocalConfig(
        depths=(1, 2, 2, 1), widths=(16, 32, 64, 128), head_dim=32,
        drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, decoder_hidden=64,
    ),
    # For tests: as small as the architecture allows while keeping every block type.
    "vilocal_tiny": ViLocalConfig(
        depths=(1, 1, 1, 1), widths=(8, 16, 32, 64), head_dim=16,
        drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, decoder_hidden=16,
    ),
}
