"""``vilocal-focal``: one stage-1 encoder, trained once before the Tuner (or ``data.encoder``),
shared by every trial; a trial trains stage 2 with its α, γ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vilocal_dist.distributed.kinds.base import register_kind
from vilocal_dist.distributed.kinds.training import TRAIN_EXPERIMENT, TrainingKind
from vilocal_dist.errors import ConfigError

#: Stage-1 fields a focal sweep may not search: its encoder is trained once and shared.
STAGE1_FIELDS = ("tau", "contrast_samples", "contrastive_labels", "model", "size_h", "size_w", "compress_fraction", "crf")


@register_kind
class Focal(TrainingKind):
    name = "vilocal-focal"
    trains_stage1 = False
    data_keys = ("root", "forge", "encoder")

    def check_param(self, name: str, source: Path) -> None:
        if name in STAGE1_FIELDS:
            raise ConfigError(f"search_space.{name}: {self.name} reuses one trained encoder; stage-1 keys can't vary", source)

    def shared_encoder(self, spec: Any, data: str) -> str:
        """The given ``data.encoder``, or one trained here once (resumable by its run name)."""
        from vilocal_dist.distributed.train import train_stage
        from vilocal_dist.engines.config import TrainConfig

        if spec.data.encoder:
            return str(Path(spec.data.encoder).expanduser().resolve())
        cfg = TrainConfig.from_dict(dict(spec.base))
        outcome = train_stage(1, cfg, data, run_name=f"{spec.name}-encoder", workers=spec.resources.workers_per_trial,
                              experiment=TRAIN_EXPERIMENT)  # fmt: skip
        return outcome.checkpoint
