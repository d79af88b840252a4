"""What the two stage loops share: the runtime hooks, the LR schedule, loaders, DDP helpers.

The loops are plain PyTorch. When ``torch.distributed`` is initialised (a Ray Train worker, or
torchrun), they wrap the trained module in DDP, shard the data with a ``DistributedSampler`` and
average metrics over workers; otherwise they run as one process. Anything a launcher adds
(reporting, checkpoint upload, resume) comes in through :class:`Runtime`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler


@dataclass
class EpochEnd:
    """Handed to ``Runtime.on_epoch_end`` after every epoch (on every worker)."""

    stage: int
    epoch: int  # 0-based, just completed
    samples_seen: int  # training samples seen so far in this stage, all workers together
    metrics: dict[str, float]  # averaged over workers: train/loss, val/loss, (val/f1, val/iou)
    checkpoint: Callable[[], dict[str, Any]]  # builds the checkpoint dict (call on rank 0 only)
    rank: int = 0


@dataclass
class Runtime:
    """Where a loop runs and whom it tells: device, resume state, per-epoch callback."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    resume: dict[str, Any] | None = None  # a checkpoint dict of this stage to continue from
    on_epoch_end: Callable[[EpochEnd], None] | None = None
    progress: bool = True


@dataclass
class StageResult:
    """What a stage loop returns: the trained model and the history of epoch metrics."""

    model: nn.Module
    history: list[dict[str, float]]
    last_checkpoint: dict[str, Any] | None = None


def fresh_model(cfg: Any) -> nn.Module:
    """A newly initialised ``cfg.model`` (a TrainConfig), the same weights for the same ``cfg.seed``:
    reruns and restarted worker groups start from identical weights, on every worker.

    Blocks are recomputed in backward only where a step at ``cfg.batch_size`` and ``cfg.size``
    would not fit the default memory budget (checkpointing "auto", `models.memory`)."""
    from vilocal_dist.models import create_model, get_config
    from vilocal_dist.models.memory import DEFAULT_BUDGET_GIB, checkpoint_overrides

    config = get_config(cfg.model, use_hp3d=cfg.use_hp3d)
    recompute = checkpoint_overrides("auto", config, cfg.batch_size, 5, cfg.size,  # 5-frame clips
                                     DEFAULT_BUDGET_GIB * 2**30)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return create_model(cfg.model, use_hp3d=cfg.use_hp3d, **recompute)


def cosine_lr(step: int, total_steps: int, lr: float, min_lr: float) -> float:
    """Cosine decay from ``lr`` at step 0 to ``min_lr`` at ``total_steps`` (per optimizer step)."""
    progress = min(step / max(total_steps, 1), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def maybe_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in DDP when several processes train together, else itself."""
    _, size = world()
    if size == 1:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def make_loader(ds: Dataset, batch_size: int, *, train: bool, seed: int, workers: int) -> DataLoader:
    """Shuffled (train) or ordered (val) loader; sharded across workers under torch.distributed."""
    _, size = world()
    if size > 1:
        # Every worker sees a disjoint shard; the loop calls set_epoch so shuffles differ by epoch.
        sampler = DistributedSampler(ds, shuffle=train, seed=seed, drop_last=False)
    elif train:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))  # reseeded by set_epoch
    else:
        sampler = SequentialSampler(ds)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=False)


def set_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make epoch ``epoch``'s shuffle a function of (seed, epoch) only, so a resumed run repeats it."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif isinstance(loader.sampler, RandomSampler):
        loader.sampler.generator = torch.Generator().manual_seed(seed * 100_003 + epoch)


def reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each value over all workers (identity in one process)."""
    _, size = world()
    if size == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def cosine_adamw(groups: list[tuple[Any, Any]]) -> torch.optim.AdamW:
    """AdamW over ``(parameters, OptimSpec)`` groups, each remembering its own lr range for
    :func:`cosine_schedule` (the keys travel in the optimizer state, so a resume keeps them)."""
    return torch.optim.AdamW([
        {"params": list(params), "lr": spec.lr, "base_lr": spec.lr, "min_lr": spec.min_lr,
         "weight_decay": spec.weight_decay}
        for params, spec in groups
    ])


def cosine_schedule(optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
    """Set every param group's lr on its own cosine from ``base_lr`` to ``min_lr`` (group keys)."""
    for group in optimizer.param_groups:
        group["lr"] = cosine_lr(step, total_steps, group["base_lr"], group["min_lr"])
