"""Stage 1: train the ViLocal encoder with the supervised pixel contrastive loss (temperature τ).

Readable top to bottom: build optimizer and loaders, (resume), then per epoch train, validate,
and hand the epoch to ``runtime.on_epoch_end`` (a Ray launcher reports and checkpoints there).
Validation metric ``val/loss`` is the same contrastive loss on held-out videos, with the pixel
sampling seeded identically every epoch so epochs are comparable; it selects the best stage-1
checkpoint (lower is better). Beside the losses, ``train/pos_sim`` / ``train/neg_sim`` (and the
``val/`` pair) are the mean cosine similarities the loss computes, of anchors to the other
anchors and of anchors to the negatives: the loss falls by pushing them apart, so they show
whether pristine and inpainted pixels separate (or everything collapses together).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vilocal_dist.engines.checkpoint import checkpoint_dict
from vilocal_dist.engines.config import TrainConfig
from vilocal_dist.engines.loop import (
    EpochEnd, Runtime, StageResult, cosine_adamw, cosine_schedule, fresh_model, make_loader, maybe_ddp, reduce_sums,
    set_epoch, world,
)
from vilocal_dist.losses import PixelContrastiveLoss
from vilocal_dist.models import ViLocal, autocast_context

STAGE = 1
SELECTION_METRIC, SELECTION_MODE = "val/loss", "min"


def train_stage1(
    cfg: TrainConfig, train_ds: Dataset, val_ds: Dataset, *, model: ViLocal | None = None,
    runtime: Runtime | None = None,
) -> StageResult:
    """Train ``model.encoder`` (a fresh ``cfg.model`` seeded by ``cfg.seed`` when None) for ``cfg.stage1_epochs``.

    Datasets yield dict(clip [3,5,H,W], mask [1,H,W], ...). Returns the model and per-epoch metrics.
    """
    rt = runtime or Runtime()
    device, (rank, _) = rt.device, world()
    spec = cfg.optim(STAGE)
    model = (model if model is not None else fresh_model(cfg)).to(device)
    encoder = maybe_ddp(model.encoder, device)  # only the encoder learns in stage 1
    optimizer = cosine_adamw([(model.encoder.parameters(), spec)])
    criterion = _criterion(cfg)
    train_loader = make_loader(train_ds, cfg.batch_size, train=True, seed=cfg.seed, workers=cfg.loader_workers)
    val_loader = make_loader(val_ds, cfg.batch_size, train=False, seed=cfg.seed, workers=cfg.loader_workers)
    steps_per_epoch = len(train_loader)
    total_steps = spec.epochs * steps_per_epoch

    start_epoch, samples_seen = 0, 0
    if rt.resume is not None:  # continue after the last completed epoch of an earlier attempt
        model.load_state_dict(rt.resume["model_state"])
        optimizer.load_state_dict(rt.resume["optim_state"])
        start_epoch, samples_seen = rt.resume["epoch"] + 1, rt.resume["samples_seen"]

    def snapshot(epoch: int, metrics: dict[str, float]) -> dict:  # this stage's checkpoint, now
        return checkpoint_dict(model, model_name=cfg.model, stage=STAGE, epoch=epoch, samples_seen=samples_seen,
                               train_config=cfg.to_dict(), metrics=metrics, optimizer=optimizer)

    history: list[dict[str, float]] = []
    for epoch in range(start_epoch, spec.epochs):
        set_epoch(train_loader, epoch, cfg.seed)
        encoder.train()
        # Pixel sampling differs per worker and epoch but is reproducible.
        gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch * 16 + rank)
        sums = {"loss": 0.0, "pos_sim": 0.0, "neg_sim": 0.0, "valid": 0.0, "clips": 0.0}
        bar = tqdm(train_loader, desc=f"stage 1 epoch {epoch + 1}/{spec.epochs}", leave=False,
                   disable=not rt.progress or rank != 0)
        for i, batch in enumerate(bar):
            # Per-step cosine schedule computed from the global step (nanoGPT style), so a resumed
            # run lands on the same curve without a scheduler state.
            cosine_schedule(optimizer, epoch * steps_per_epoch + i, total_steps)
            clip, mask = batch["clip"].to(device), batch["mask"].to(device)
            with autocast_context(device):
                features = encoder(clip)
            out = criterion(features, mask, generator=gen)
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()  # zero with a grad_fn when no frame has both classes: DDP stays in step
            optimizer.step()
            _accumulate(sums, out)
            sums["clips"] += len(clip)
            bar.set_postfix(loss=f"{out['loss'].item():.4f}")

        train = reduce_sums(sums, device)
        samples_seen += int(train["clips"])
        metrics = {**_means(train, "train"), **validate_stage1(model, val_loader, cfg, device),
                   "epoch": float(epoch), "lr": optimizer.param_groups[0]["lr"]}
        history.append(metrics)
        if rt.on_epoch_end is not None:
            rt.on_epoch_end(EpochEnd(STAGE, epoch, samples_seen, metrics, lambda: snapshot(epoch, metrics), rank))
    return StageResult(model, history, snapshot(epoch, metrics) if history else None)


def _criterion(cfg: TrainConfig) -> PixelContrastiveLoss:
    return PixelContrastiveLoss(temperature=cfg.tau, max_samples=cfg.contrast_samples,
                                label_mode=cfg.contrastive_labels)


def _accumulate(sums: dict[str, float], out: dict) -> None:
    """Add one batch's loss and similarities, weighted by the frames that hold both pristine and
    inpainted cells (``n_valid``): the loss output is a mean over exactly those."""
    for key in ("loss", "pos_sim", "neg_sim"):
        sums[key] += out[key].item() * out["n_valid"]
    sums["valid"] += out["n_valid"]


def _means(sums: dict[str, float], split: str) -> dict[str, float]:
    """``split/loss``, ``split/pos_sim``, ``split/neg_sim`` from summed batches (0 with no valid frame)."""
    return {f"{split}/{key}": sums[key] / max(sums["valid"], 1) for key in ("loss", "pos_sim", "neg_sim")}


@torch.no_grad()
def validate_stage1(model: ViLocal, loader: DataLoader, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Mean contrastive loss and pos/neg similarities over the validation frames that hold both
    classes (all workers)."""
    model.eval()
    criterion = _criterion(cfg)
    rank, _ = world()
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 7919 * (rank + 1))  # same pixels every epoch
    sums = {"loss": 0.0, "pos_sim": 0.0, "neg_sim": 0.0, "valid": 0.0}
    for batch in loader:
        clip, mask = batch["clip"].to(device), batch["mask"].to(device)
        with autocast_context(device):
            features = model.encoder(clip)
        _accumulate(sums, criterion(features, mask, generator=gen))
    return _means(reduce_sums(sums, device), "val")
