"""The ViLocal checkpoint: one ``model.pt`` that rebuilds the model and says how it was trained.

Contents (a plain dict, loadable with ``torch.load(weights_only=True)``)::

    format        "vilocal-checkpoint/1"
    model_name    preset name, e.g. "vilocal_small"
    model_config  ViLocalConfig.to_dict() (the resolved network, overrides included)
    model_state   state dict of the whole ViLocal (encoder + decoder)
    optim_state   optimizer state dict (to resume; None in exported models)
    train_config  TrainConfig.to_dict() (the resolved config of the run)
    stage         1 or 2
    epoch         last completed epoch (0-based)
    samples_seen  training samples seen in this stage (all workers)
    metrics       the epoch's metrics, e.g. {"val/loss": ...}
    version       vilocal_dist version
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from vilocal_dist import __version__
from vilocal_dist.errors import InputError
from vilocal_dist.models import ViLocal, ViLocalConfig

CHECKPOINT_FILE = "model.pt"
FORMAT = "vilocal-checkpoint/1"


def checkpoint_dict(
    model: ViLocal,
    *,
    model_name: str,
    stage: int,
    epoch: int,
    samples_seen: int,
    train_config: dict[str, Any],
    metrics: dict[str, float],
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Everything a checkpoint holds (tensors moved to CPU so any device can load it)."""
    return {
        "format": FORMAT,
        "model_name": model_name,
        "model_config": model.config.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optim_state": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "train_config": dict(train_config),
        "stage": int(stage),
        "epoch": int(epoch),
        "samples_seen": int(samples_seen),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "version": __version__,
    }


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> Path:
    """Write ``ckpt`` to ``path`` (a file, or a folder that gets ``model.pt``) atomically."""
    path = Path(path)
    if path.suffix != ".pt":
        path = path / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".model-", suffix=".pt.tmp")
    os.close(fd)
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file (or a folder holding ``model.pt``); InputError if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise InputError("checkpoint not found (expected a model.pt file or a folder holding one)", path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        # The first line only: torch appends a page of weights_only advice that does not apply here.
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(f"not a readable checkpoint ({type(exc).__name__}: {first})", path) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"not a vilocal checkpoint (expected format {FORMAT!r})", path)
    return ckpt


def build_model(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> ViLocal:
    """The ViLocal described by ``ckpt`` with its weights loaded, on ``device``."""
    model = ViLocal(ViLocalConfig.from_dict(dict(ckpt["model_config"])))
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:  # layer shapes/names changed between the saving and the running code
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise InputError(
            f"checkpoint weights do not fit this version's {ckpt['model_name']} network "
            f"(saved by vilocal_dist {ckpt.get('version', '?')}): {first[0].strip()}"
        ) from None
    return model.to(device)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
