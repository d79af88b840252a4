"""``vilocal-contrastive``: a trial trains stage 1 (contrastive, its τ) then stage 2 on that encoder.

It reports ``val/f1`` once per stage-2 epoch (ASHA acts on stage-2 epochs: set ``max_t`` to
``stage2_epochs``), with stage 1's best metrics attached as ``stage1/*``.
"""

from __future__ import annotations

from vilocal_dist.distributed.kinds.base import register_kind
from vilocal_dist.distributed.kinds.training import TrainingKind


@register_kind
class Contrastive(TrainingKind):
    name = "vilocal-contrastive"
    trains_stage1 = True
