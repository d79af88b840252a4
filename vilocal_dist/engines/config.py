"""The ViLocal training configuration: one frozen dataclass of flat scalars for both stages.

Defaults reproduce the paper (reference-code.md): stage 1 AdamW lr 5e-4, wd 1e-4, cosine to 5e-6,
10 epochs; stage 2 AdamW lr 1e-4, wd 1e-4, cosine to 1e-6, 5 epochs; batch 2; τ = 0.1, α = 0.5,
γ = 2; 5-frame clips at 240×432, a quarter of them H.264 CRF 23. Both stages live in one flat
dataclass so one YAML file, one ``--set tau=0.2`` and one Tune search space cover ``--stage both``;
stage-specific fields carry a ``stage1_``/``stage2_`` prefix. The "joint" mode (no contrastive
stage: encoder and decoder trained together with the focal loss) runs ``stage1_epochs +
stage2_epochs`` epochs, the encoder on the stage-1 and the decoder on the stage-2 learning rates.
The "random" mode is stage 2 alone on a never-trained encoder (the control that tells what stage 1
adds). Stage 2 freezes the encoder unless ``stage2_encoder_lr_factor`` > 0: then the encoder
fine-tunes too, at that factor times the stage-2 learning rates.

Load order: defaults < YAML file < ``--set key=value`` overrides (the shared ``vilocal_dist.config``
syntax). Unknown keys are a ConfigError that suggests the closest known key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from vilocal_dist.config import check_keys, from_mapping, load_yaml
from vilocal_dist.errors import ConfigError

#: Training modes of a run: one stage, both in turn, "joint" (no contrastive stage) or "random"
#: (stage 2 on a freshly initialised, never-trained encoder).
STAGES = ("1", "2", "both", "joint", "random")
#: How stage 1 labels feature-grid cells: ``losses.contrastive.LABEL_MODES``, repeated here so that
#: reading a config does not import torch (a test keeps the two equal).
CONTRASTIVE_LABELS = ("centre", "ignore_mixed")

#: Fields only stage 2 reads, besides the ``stage2_*`` ones.
STAGE2_ONLY = ("alpha", "gamma", "threshold")
#: Worker-group restarts from the latest checkpoint after a worker dies (Ray FailureConfig).
DEFAULT_MAX_FAILURES = 2


@dataclass(frozen=True)
class OptimSpec:
    """The optimisation settings of one stage (what the loops read)."""

    epochs: int
    lr: float
    min_lr: float
    weight_decay: float


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a ViLocal training run (both stages)."""

    model: str = "vilocal"  # preset name for vilocal_dist.models.create_model
    use_hp3d: bool = True  # False = raw RGB into the encoder (the paper's "w/o HP3D" ablation)
    size_h: int = 240  # clips are resized to size_h × size_w (bilinear; masks nearest)
    size_w: int = 432
    compress_fraction: float = 0.25  # share of training clips H.264-compressed (paper: 1/4)
    crf: int = 23
    batch_size: int = 2  # per worker
    seed: int = 0
    val_fraction: float = 0.1  # share of the train-split *source videos* held out for validation
    max_train_clips: int = 0  # 0 = every clip; >0 = an evenly spaced subset (quick demos)
    max_val_clips: int = 0
    loader_workers: int = 0
    # stage 1: encoder + supervised pixel contrastive loss
    stage1_epochs: int = 10
    stage1_lr: float = 5e-4
    stage1_min_lr: float = 5e-6
    stage1_weight_decay: float = 1e-4
    tau: float = 0.1
    contrast_samples: int = 3000  # max anchors / negatives sampled per frame
    contrastive_labels: str = "centre"  # cell labels, CONTRASTIVE_LABELS; centre (the authors') measured as well
    # stage 2: frozen encoder + decoder + focal loss
    stage2_epochs: int = 5
    stage2_lr: float = 1e-4
    stage2_min_lr: float = 1e-6
    stage2_weight_decay: float = 1e-4
    stage2_encoder_lr_factor: float = 0.0  # 0 = frozen encoder (the paper); > 0 = fine-tuned at factor × lr
    alpha: float = 0.5
    gamma: float = 2.0
    threshold: float = 0.5  # for val/f1 and val/iou

    def __post_init__(self) -> None:
        checks = [
            (self.tau > 0, f"tau must be > 0, got {self.tau}"),
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.gamma >= 0, f"gamma must be >= 0, got {self.gamma}"),
            (0.0 < self.threshold < 1.0, f"threshold must be in (0, 1), got {self.threshold}"),
            (self.size_h > 0 and self.size_w > 0, f"size must be positive, got {self.size_h}x{self.size_w}"),
            (0.0 <= self.compress_fraction <= 1.0, f"compress_fraction must be in [0, 1], got {self.compress_fraction}"),
            (0 <= self.crf <= 51, f"crf must be in [0, 51], got {self.crf}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (self.max_train_clips >= 0 and self.max_val_clips >= 0, "max_*_clips must be >= 0"),
            (self.loader_workers >= 0, f"loader_workers must be >= 0, got {self.loader_workers}"),
            (self.contrast_samples >= 2, f"contrast_samples must be >= 2, got {self.contrast_samples}"),
            (self.contrastive_labels in CONTRASTIVE_LABELS,
             f"contrastive_labels must be one of {', '.join(CONTRASTIVE_LABELS)}, got {self.contrastive_labels!r}"),
            (0.0 <= self.stage2_encoder_lr_factor <= 1.0,
             f"stage2_encoder_lr_factor must be in [0, 1] (0 = frozen encoder), got {self.stage2_encoder_lr_factor}"),
        ]
        for stage in (1, 2):
            o = self.optim(stage)
            checks += [
                (o.epochs >= 1, f"stage{stage}_epochs must be >= 1, got {o.epochs}"),
                (o.lr > 0, f"stage{stage}_lr must be > 0, got {o.lr}"),
                (0 <= o.min_lr <= o.lr, f"stage{stage}_min_lr must be in [0, stage{stage}_lr], got {o.min_lr}"),
                (o.weight_decay >= 0, f"stage{stage}_weight_decay must be >= 0, got {o.weight_decay}"),
            ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def optim(self, stage: int) -> OptimSpec:
        """Epochs, learning rates and weight decay of ``stage`` (1 or 2)."""
        if stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {stage}")
        p = f"stage{stage}_"
        return OptimSpec(
            epochs=getattr(self, p + "epochs"),
            lr=getattr(self, p + "lr"),
            min_lr=getattr(self, p + "min_lr"),
            weight_decay=getattr(self, p + "weight_decay"),
        )

    def stage2_encoder_optim(self) -> OptimSpec | None:
        """How stage 2 trains the encoder: None when frozen, else the stage-2 settings with the
        learning rates scaled by ``stage2_encoder_lr_factor``."""
        if self.stage2_encoder_lr_factor == 0.0:
            return None
        spec = self.optim(2)
        return dataclasses.replace(spec, lr=spec.lr * self.stage2_encoder_lr_factor,
                                   min_lr=spec.min_lr * self.stage2_encoder_lr_factor)

    def stage1_identity(self) -> dict[str, Any]:
        """The fields stage 1 reads: configs with equal identities train the very same encoder."""
        return {k: v for k, v in self.to_dict().items() if not k.startswith("stage2_") and k not in STAGE2_ONLY}

    @property
    def size(self) -> tuple[int, int]:
        return (self.size_h, self.size_w)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str | Path | None = None) -> "TrainConfig":
        """Build from a flat dict; unknown keys and wrongly typed values are ConfigErrors."""
        return from_mapping(cls, d, "", source, "training config key")

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def check_stage(stage: str, cfg: TrainConfig) -> None:
    """A training mode and a config that go together (ConfigError otherwise)."""
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if stage == "joint" and cfg.stage2_encoder_lr_factor > 0:
        raise ConfigError("stage2_encoder_lr_factor fine-tunes a stage-1 or random encoder in stage 2; joint training "
                          "already trains the encoder (at stage1_lr): drop one of them")


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None, **defaults: Any
) -> TrainConfig:
    """Defaults (plus ``defaults``, e.g. model from ``--preset``) < YAML ``path`` < ``overrides``
    (``--set`` values from :func:`vilocal_dist.config.parse_sets`)."""
    values: dict[str, Any] = dict(defaults)
    if path is not None:
        loaded = load_yaml(path, "training config")
        check_keys(loaded, [f.name for f in dataclasses.fields(TrainConfig)], "", path, "training config key")
        values.update(loaded)
    values.update(overrides or {})
    return TrainConfig.from_dict(values, source=path)
