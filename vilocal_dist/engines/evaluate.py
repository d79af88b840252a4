"""Evaluate a trained detector on a forged dataset: pixel F1 / IoU per frame, every frame.

Every frame of every video is the middle of one 5-frame clip (reflected at the ends, as in
training), scored at the model's training size unless told otherwise. Scores are summarised by
:class:`~vilocal_dist.engines.metrics.MaskEvaluator`: pooled over all frames (the paper's
number), averaged per video, by inpainting method, with the trivial all-zeros / all-ones
predictors beside them and the empty-ground-truth convention stated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vilocal_dist import storage
from vilocal_dist.device import pick_device
from vilocal_dist.data.clips import ClipDataset
from vilocal_dist.data.manifest import ForgedDataset
from vilocal_dist.engines.checkpoint import build_model, load_checkpoint
from vilocal_dist.engines.metrics import MaskEvaluator
from vilocal_dist.errors import ConfigError, InputError, VilocalError
from vilocal_dist.models import ViLocal, autocast_context
from vilocal_dist.tracking.model_registry import is_model_uri, resolve_model

#: What detection and evaluation read from a checkpoint (a foreign dict may lack any of it).
_DETECTOR_KEYS = ("stage", "model_name", "model_config", "model_state", "train_config")


def model_reference(checkpoint: str | Path) -> str:
    """How reports name a model: a registry URI as given, a checkpoint as an absolute path."""
    return str(checkpoint) if is_model_uri(checkpoint) else storage.normalize(checkpoint)


@torch.no_grad()
def predict_probs(model: ViLocal, clip: torch.Tensor) -> torch.Tensor:
    """clip: [B,3,5,H,W] in [0,1] on the model's device -> forged-pixel probabilities [B,1,H,W]."""
    model.eval()
    with autocast_context(clip.device):
        logits = model(clip)["pred_mask"]
    return logits.float().sigmoid()


def load_detector(
    checkpoint: str | Path, device: torch.device | str = "cpu", size: tuple[int, int] | None = None
) -> tuple[dict[str, Any], ViLocal, tuple[int, int]]:
    """(checkpoint dict, model on ``device``, input size) of a stage-2 checkpoint (a path, or a
    registered ``models:/vilocal-detector/<version or @alias>``); every problem with the file is an
    InputError/ConfigError naming it. ``size`` defaults to the training size."""
    ckpt = load_checkpoint(resolve_model(checkpoint))
    missing = [key for key in _DETECTOR_KEYS if key not in ckpt]
    train_cfg = ckpt.get("train_config")
    if not missing and not (isinstance(train_cfg, dict) and {"size_h", "size_w"} <= set(train_cfg)):
        missing = ["train_config.size_h/size_w"]
    if missing:
        raise InputError(f"incomplete vilocal checkpoint: no {', '.join(missing)}", checkpoint)
    if ckpt["stage"] != 2:
        raise ConfigError(
            f"checkpoint is from stage {ckpt['stage']} (encoder only, untrained decoder); use a stage-2 checkpoint",
            checkpoint,
        )
    try:
        model = build_model(ckpt, device)
    except VilocalError as exc:  # a network this version cannot build or load: say which file
        raise InputError(exc.problem, checkpoint) from None
    size = tuple(size) if size is not None else (int(train_cfg["size_h"]), int(train_cfg["size_w"]))
    return ckpt, model, size


def evaluate_model(
    model: ViLocal, dataset: Dataset, *, threshold: float = 0.5, batch_size: int = 4,
    device: torch.device | str = "cpu", progress: bool = True, also_at: Sequence[float] = (),
) -> dict[str, Any]:
    """Scores of ``model`` on every item of ``dataset`` (a ClipDataset or a Subset of one); the
    scores at the thresholds ``also_at`` too, from the same predictions, under ``at_threshold``
    (keyed ``f"{t:g}"``)."""
    device = torch.device(device)
    model = model.to(device)
    evaluators = {t: MaskEvaluator(t) for t in (threshold, *also_at)}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        probs = predict_probs(model, batch["clip"].to(device)).cpu()
        for evaluator in evaluators.values():
            evaluator.update(probs, batch["mask"], videos=batch["video"], methods=batch["method"],
                             frames=batch["frame"])
    scores = evaluators[threshold].compute()
    if also_at:
        scores["at_threshold"] = {f"{t:g}": evaluators[t].compute() for t in also_at}
    return scores


def cached(path: str | Path) -> str | Path:
    """A local path for a checkpoint or video given as a path or storage URI (InputError if absent)."""
    if is_model_uri(path):  # a registered model: resolve_model fetches it
        return path
    try:
        return storage.local_copy(path)
    except FileNotFoundError:
        raise InputError("no such file or folder", path) from None


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    *,
    split: str = "test",
    methods: Sequence[str] | None = None,
    size: tuple[int, int] | None = None,
    threshold: float = 0.5,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    progress: bool = True,
    also_at: Sequence[float] = (),
) -> dict[str, Any]:
    """Load a stage-2 checkpoint and score it on ``split`` of the forged dataset at ``data``; either
    may be a storage URI (read through the node-local cache). ``also_at``: see `evaluate_model`."""
    device = pick_device(str(device or "auto"))
    ckpt, model, size = load_detector(cached(checkpoint), device, size)
    forged = ForgedDataset(data)
    records = forged.records(split=split, methods=list(methods) if methods else None)
    if not records:
        raise InputError(f"no complete videos in split {split!r}" + (f" for methods {list(methods)}" if methods else ""), data)
    dataset = ClipDataset.from_manifest(forged.local_copy(records), split=split,
                                        methods=list(methods) if methods else None, size=size, compress_fraction=0.0)
    scores = evaluate_model(model, dataset, threshold=threshold, batch_size=batch_size,
                            device=device, progress=progress, also_at=also_at)
    return {
        "model": model_reference(checkpoint),
        "model_name": ckpt["model_name"],
        "data": storage.normalize(data),
        "split": split,
        "size": list(size),
        **scores,
    }
