"""Score another detector's output: a folder of per-frame masks or probability maps.

Layout, one folder per video of the dataset (the manifest's video id)::

    PRED/<video id>/00000.png …   8/16-bit gray or palette PNG: value / max = probability
                                  (a 0/255 mask is a probability map of 0 and 1)
    PRED/<video id>/00000.npy …   float H×W (or 1×H×W) in [0, 1], or bool

The i-th file by name is frame i; every frame of every video of the split needs one. Scores are
those of model evaluation (:class:`~vilocal_dist.engines.metrics.MaskEvaluator`: per-frame F1 /
IoU at the threshold, pooled and per video, by method, with the trivial predictors), at the
dataset's own size unless ``size`` is given (then ground truth is resized nearest, probabilities
bilinearly). Every missing, unreadable or wrongly sized file is listed before anything is scored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vilocal_dist.data.manifest import ForgedDataset
from vilocal_dist.data.sources import open_source
from vilocal_dist.engines.metrics import MaskEvaluator
from vilocal_dist.errors import InputError, VilocalError
from vilocal_dist.video.io import image_header

PRED_EXTS = (".png", ".npy")


class PredictionProblems(InputError):
    """Every missing or mismatched prediction file, one report line each."""

    def __init__(self, problems: Sequence[str], root: Path) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) with the predictions; nothing was scored", root)


def prediction_files(folder: Path) -> list[Path]:
    """PNG / NPY files of one video's prediction folder, sorted by name (hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PRED_EXTS and p.is_file() and not p.name.startswith("."))


def _shape(path: Path) -> tuple[int, int]:
    """(height, width) of a prediction file from its header."""
    if path.suffix.lower() == ".png":
        return image_header(path)[:2]
    try:
        shape = np.load(path, mmap_mode="r").shape
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable .npy ({exc})", path) from None
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise InputError(f"a probability map must be H×W or 1×H×W, got shape {tuple(shape)}", path)
    return int(shape[0]), int(shape[1])


def read_prediction(path: Path) -> np.ndarray:
    """One prediction file -> float32 H×W probabilities in [0, 1]."""
    if path.suffix.lower() == ".npy":
        values = np.load(path)
        values = values[0] if values.ndim == 3 else values
        if values.dtype == bool:
            return values.astype(np.float32)
        if not np.issubdtype(values.dtype, np.floating):
            raise InputError(f"a .npy prediction must be float probabilities or bool, got {values.dtype}", path)
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise InputError("probabilities must be finite and within [0, 1]", path)
        return values.astype(np.float32)
    with Image.open(path) as im:
        mode, values = im.mode, np.asarray(im)
    if mode == "P":
        return (values != 0).astype(np.float32)  # palette index 0 = background
    if values.ndim == 3:
        values = values[..., 0]  # gray stored as RGB(A)
    if values.dtype == bool:
        return values.astype(np.float32)
    scale = 65535.0 if values.dtype == np.uint16 or mode.startswith("I") else 255.0
    return np.clip(values.astype(np.float32) / scale, 0.0, 1.0)


def check_predictions(root: Path, records: Sequence[dict[str, Any]], size: tuple[int, int] | None) -> tuple[dict[str, list[Path]], list[str]]:
    """({video id: files}, problems): a folder per video, one file per frame, each of the video's
    size (any size when ``size`` resizes everything). Headers only."""
    plan, problems = {}, []
    for record in records:
        folder = root / record["id"]
        if not folder.is_dir():
            problems.append(f"{folder}: no predictions for video {record['id']} ({record['method']}, {record['frames']} frames)")
            continue
        files = prediction_files(folder)
        if len(files) != record["frames"]:
            problems.append(f"{folder}: {len(files)} prediction files for {record['frames']} frames")
            continue
        bad = []
        for file in files:
            try:
                shape = _shape(file)
            except VilocalError as exc:
                problems.append(f"{file}: {exc.problem}")
                continue
            if size is None and shape != (record["height"], record["width"]):
                bad.append(f"{file.name} is {shape[1]}x{shape[0]}")
        if bad:
            problems.append(f"{folder}: predictions differ from the video's {record['width']}x{record['height']} "
                            f"(score at one size with --size): {', '.join(bad[:5])}" + (" …" if len(bad) > 5 else ""))
        plan[record["id"]] = files
    return plan, problems


def score_predictions(
    predictions: str | Path,
    data: str | Path,
    *,
    split: str = "test",
    methods: Sequence[str] | None = None,
    threshold: float = 0.5,
    size: tuple[int, int] | None = None,
    detector: str = "external",
    progress: bool = True,
) -> dict[str, Any]:
    """Scores of the predictions in ``predictions`` on ``split`` of the dataset at ``data``, in the
    form :func:`~vilocal_dist.engines.evaluate.evaluate_checkpoint` returns (``model`` = the folder)."""
    root = Path(predictions).expanduser()
    if not root.is_dir():
        raise InputError("no such predictions folder", root)
    dataset = ForgedDataset(data)
    records = dataset.records(split=split, methods=list(methods) if methods else None)
    if not records:
        raise InputError(f"no complete videos in split {split!r}" + (f" for methods {list(methods)}" if methods else ""), data)
    plan, problems = check_predictions(root, records, size)
    if problems:
        raise PredictionProblems(problems, root)
    evaluator = MaskEvaluator(threshold)
    for record in tqdm(records, desc="score", unit="video", disable=not progress):
        frames_path, masks_path = dataset.video_paths(record)
        masks = np.stack(list(open_source(frames_path, mask_path=masks_path).iter_masks(size)))
        probs = np.stack([read_prediction(f) for f in plan[record["id"]]])
        if size is not None:
            probs = np.stack([cv2.resize(p, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for p in probs])
        count = len(probs)
        evaluator.update(torch.from_numpy(probs), torch.from_numpy(masks).float(), videos=[record["id"]] * count,
                         methods=[record["method"]] * count, frames=range(count))
    return {
        "model": str(root.resolve()),
        "model_name": detector,
        "data": str(Path(data).resolve()),
        "split": split,
        "size": list(size) if size is not None else None,
        **evaluator.compute(),
    }
