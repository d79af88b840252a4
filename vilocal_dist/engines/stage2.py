"""Stage 2: freeze the stage-1 encoder and train the light decoder with the focal loss (α, γ).

Same shape as stage 1: optimizer and loaders, (resume), then per epoch train, validate (focal
loss plus pixel F1 / IoU at ``cfg.threshold``, pooled over frames) and hand the epoch to
``runtime.on_epoch_end``. ``val/f1`` (higher is better) selects the best stage-2 checkpoint.

The encoder stays frozen unless ``cfg.stage2_encoder_lr_factor`` > 0: then it fine-tunes with
the decoder at that factor times the stage-2 learning rates (``TrainConfig.stage2_encoder_optim``).
Whatever encoder the model holds is the starting point: stage 1's, or a never-trained one (the
"random" training mode, the control that shows what stage 1 adds).

``joint=True`` is the paper's "w/o L_contra" ablation: no contrastive stage, the encoder is not
frozen and learns together with the decoder from the focal loss alone, for ``stage1_epochs +
stage2_epochs`` epochs (the same budget as both stages), the encoder at the stage-1 and the
decoder at the stage-2 learning rates. Its checkpoints are stage-2 checkpoints: a full detector.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vilocal_dist.engines.checkpoint import checkpoint_dict
from vilocal_dist.engines.config import TrainConfig
from vilocal_dist.engines.loop import (
    EpochEnd, Runtime, StageResult, cosine_adamw, cosine_schedule, make_loader, maybe_ddp, reduce_sums, set_epoch, world,
)
from vilocal_dist.engines.metrics import frame_scores
from vilocal_dist.losses import focal_loss
from vilocal_dist.models import ViLocal, autocast_context

STAGE = 2
SELECTION_METRIC, SELECTION_MODE = "val/f1", "max"


def train_stage2(
    cfg: TrainConfig, train_ds: Dataset, val_ds: Dataset, *, model: ViLocal, runtime: Runtime | None = None,
    joint: bool = False,
) -> StageResult:
    """Train ``model.decoder`` on top of ``model.encoder`` (frozen, or fine-tuned when
    ``cfg.stage2_encoder_lr_factor`` > 0) for ``cfg.stage2_epochs``; with ``joint`` train both with
    the focal loss for ``stage1_epochs + stage2_epochs``."""
    rt = runtime or Runtime()
    device, (rank, _) = rt.device, world()
    spec = cfg.optim(STAGE)
    epochs = spec.epochs + (cfg.stage1_epochs if joint else 0)
    encoder_spec = cfg.optim(1) if joint else cfg.stage2_encoder_optim()  # None: frozen
    tuned = encoder_spec is not None
    model = model.to(device)
    # Frozen means frozen: no gradients, and eval mode so BatchNorm statistics and dropout stay
    # exactly as the encoder came (from stage 1, or from its initialisation).
    model.encoder.requires_grad_(tuned)
    net = maybe_ddp(model if tuned else model.decoder, device)
    groups = [(model.decoder.parameters(), spec)]
    if tuned:
        groups.append((model.encoder.parameters(), encoder_spec))
    optimizer = cosine_adamw(groups)
    train_loader = make_loader(train_ds, cfg.batch_size, train=True, seed=cfg.seed, workers=cfg.loader_workers)
    val_loader = make_loader(val_ds, cfg.batch_size, train=False, seed=cfg.seed, workers=cfg.loader_workers)
    steps_per_epoch = len(train_loader)
    total_steps = epochs * steps_per_epoch

    start_epoch, samples_seen = 0, 0
    if rt.resume is not None:
        model.load_state_dict(rt.resume["model_state"])
        optimizer.load_state_dict(rt.resume["optim_state"])
        start_epoch, samples_seen = rt.resume["epoch"] + 1, rt.resume["samples_seen"]

    def snapshot(epoch: int, metrics: dict[str, float]) -> dict:  # this stage's checkpoint, now
        return checkpoint_dict(model, model_name=cfg.model, stage=STAGE, epoch=epoch, samples_seen=samples_seen,
                               train_config=cfg.to_dict(), metrics=metrics, optimizer=optimizer)

    history: list[dict[str, float]] = []
    for epoch in range(start_epoch, epochs):
        set_epoch(train_loader, epoch, cfg.seed)
        net.train()
        if not tuned:
            model.encoder.eval()
        loss_sum, count = 0.0, 0
        bar = tqdm(train_loader, desc=f"{'joint' if joint else 'stage 2'} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not rt.progress or rank != 0)
        for i, batch in enumerate(bar):
            cosine_schedule(optimizer, epoch * steps_per_epoch + i, total_steps)
            clip, mask = batch["clip"].to(device), batch["mask"].to(device)
            if tuned:
                with autocast_context(device):
                    logits = net(clip)["pred_mask"]
            else:
                with torch.no_grad(), autocast_context(device):
                    features = model.encoder(clip)
                with autocast_context(device):
                    logits = net(features, out_size=tuple(clip.shape[-2:]))
            loss = focal_loss(logits.float(), mask, alpha=cfg.alpha, gamma=cfg.gamma)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(clip)
            count += len(clip)
            bar.set_postfix(loss=f"{loss.item():.4f}")

        train = reduce_sums({"loss": loss_sum, "n": count}, device)
        samples_seen += int(train["n"])
        metrics = {"train/loss": train["loss"] / max(train["n"], 1), **validate_stage2(model, val_loader, cfg, device),
                   "epoch": float(epoch), "lr": optimizer.param_groups[0]["lr"]}
        history.append(metrics)
        if rt.on_epoch_end is not None:
            rt.on_epoch_end(EpochEnd(STAGE, epoch, samples_seen, metrics, lambda: snapshot(epoch, metrics), rank))
    return StageResult(model, history, snapshot(epoch, metrics) if history else None)


@torch.no_grad()
def validate_stage2(model: ViLocal, loader: DataLoader, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """Focal loss and per-frame F1 / IoU (mean over all validation frames, all workers)."""
    model.eval()
    sums = {"loss": 0.0, "f1": 0.0, "iou": 0.0, "n": 0.0}
    for batch in loader:
        clip, mask = batch["clip"].to(device), batch["mask"].to(device)
        with autocast_context(device):
            logits = model(clip)["pred_mask"].float()
        sums["loss"] += focal_loss(logits, mask, alpha=cfg.alpha, gamma=cfg.gamma)["loss"].item() * len(clip)
        pred, gt = (logits.sigmoid() > cfg.threshold).flatten(1), (mask > 0.5).flatten(1)
        f1, iou = frame_scores(
            (pred & gt).sum(1).cpu().numpy(), (pred & ~gt).sum(1).cpu().numpy(), (~pred & gt).sum(1).cpu().numpy()
        )
        sums["f1"] += float(f1.sum())
        sums["iou"] += float(iou.sum())
        sums["n"] += len(clip)
    total = reduce_sums(sums, device)
    n = max(total["n"], 1)
    return {"val/loss": total["loss"] / n, "val/f1": total["f1"] / n, "val/iou": total["iou"] / n}
