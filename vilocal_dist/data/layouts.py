"""Find the videos of an existing forged dataset on disk: one :class:`Entry` per forged video.

Two ways to describe the data (see ``vilocal data import --help``):

* a **tree**, one folder per inpainting method::

      ROOT/<method>/<sequence>/00000.jpg …     frame folder (PNG/JPG/…, sorted by name)
      ROOT/<method>/<sequence>.mp4             or a video file (any container PyAV reads)
      ROOT/<method>/JPEGImages/480p/<seq>/     or the method folder is itself a DAVIS root

  and the masks of ``<sequence>``, the first that exists of:

      ROOT/<method>/masks/<sequence>/          per method (also Masks/, Annotations/)
      ROOT/<method>/<sequence>_masks/          beside the frames (also _mask/, or a mask video
      ROOT/<method>/<sequence>_mask.mp4        <sequence>_mask.<ext>)
      ROOT/<method>/Annotations/<res>/<seq>/   in a per-method DAVIS root (also Masks/<res>/)
      MASKS/<sequence>/                        the ``--masks`` folder (e.g. DAVIS Annotations/480p)
      ROOT/masks/<sequence>/                   shared by every method (also Masks/, Annotations/)

* a **list** (CSV with a header row, JSON list of objects, or JSON Lines) with the columns
  ``video`` (frame folder or video file), ``mask`` (mask folder or mask video), ``method``,
  ``source`` (the source video's name; default: the video's name) and optionally ``split``
  (train/test). Relative paths are relative to the list file.

Discovery only looks at names; :mod:`vilocal_dist.data.importer` validates the contents.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from vilocal_dist.data.manifest import SPLITS
from vilocal_dist.errors import InputError
from vilocal_dist.video.io import IMAGE_EXTS

#: Folder names that hold masks, never a method's or a sequence's frames.
MASK_DIRS = ("masks", "Masks", "Annotations", "annotations")
MASK_SUFFIXES = ("_masks", "_mask")
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".nut", ".m4v"})
LIST_EXTS = frozenset({".csv", ".json", ".jsonl"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class Entry:
    """One forged video to import: frames (folder or video file) and masks (folder, video or None)."""

    method: str
    source_video: str
    frames: Path
    masks: Path | None
    split: str | None = None  # None: from a hash of the source video's name
    origin: str = ""  # where it was declared, for the report (e.g. "list.csv line 3")


def discover(root: str | Path, masks_root: str | Path | None = None) -> tuple[list[Entry], list[str]]:
    """(entries, problems) of a tree folder or a list file; problems are report lines."""
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError("no such file or folder", root)
    if root.is_file():
        if root.suffix.lower() not in LIST_EXTS:
            raise InputError(f"a list file must be one of {sorted(LIST_EXTS)} (or give a folder)", root)
        return read_list(root)
    return discover_tree(root, None if masks_root is None else Path(masks_root).expanduser())


def name_problem(kind: str, name: str) -> str | None:
    """Why ``name`` cannot be a method / source name (it becomes part of folder names), or None."""
    if not _NAME.match(name) or "__" in name:
        return f"{kind} name {name!r} must be letters, digits, '.', '_', '+', '-' (no '__', no leading symbol)"
    return None


def _frame_children(method_dir: Path) -> list[Path]:
    """Sequence folders and video files of a plain method folder (mask folders and files excluded)."""
    out = []
    for child in sorted(method_dir.iterdir()):
        if child.name.startswith(".") or child.name in MASK_DIRS:
            continue
        stem = child.stem if child.is_file() else child.name
        if stem.endswith(MASK_SUFFIXES):
            continue
        if child.is_dir() or child.suffix.lower() in VIDEO_EXTS:
            out.append(child)
    return out


def _davis_sequences(method_dir: Path) -> list[tuple[str, Path, list[Path]]]:
    """(sequence, frame folder, candidate mask folders) of a method folder that is a DAVIS root."""
    images = method_dir / "JPEGImages"
    resolutions = sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
    has_images = any(p.suffix.lower() in IMAGE_EXTS for r in resolutions for p in r.iterdir() if p.is_file())
    if has_images:  # JPEGImages/<seq>/ directly, without a resolution level
        resolutions = [images]
    else:
        resolutions = [r for r in resolutions if r.name == "480p"] or resolutions
    out = []
    for res in resolutions:
        for seq in sorted(p for p in res.iterdir() if p.is_dir() and not p.name.startswith(".")):
            level = () if res == images else (res.name,)
            candidates = [method_dir.joinpath(d, *level, seq.name) for d in ("Annotations", "Masks")]
            out.append((seq.name, seq, candidates))
    return out


def _mask_for(root: Path, method_dir: Path, name: str, masks_root: Path | None) -> Path | None:
    candidates = [method_dir / d / name for d in MASK_DIRS]
    candidates += [method_dir / f"{name}{suffix}" for suffix in MASK_SUFFIXES]
    candidates += sorted(p for p in method_dir.glob(f"{name}_mask.*") if p.suffix.lower() in VIDEO_EXTS)
    candidates += [] if masks_root is None else [masks_root / name]
    candidates += [root / d / name for d in MASK_DIRS]
    return next((c for c in candidates if c.exists()), None)


def discover_tree(root: Path, masks_root: Path | None = None) -> tuple[list[Entry], list[str]]:
    """Entries of ``ROOT/<method>/…`` (module docstring); a method folder without videos is a problem."""
    if masks_root is not None and not masks_root.is_dir():
        raise InputError("--masks must be a folder of per-sequence mask folders", masks_root)
    if (root / "JPEGImages").is_dir():
        raise InputError("this is one DAVIS root, not a folder of methods: move it to ROOT/<method>/ (one per "
                         "inpainting method) or list its videos in a CSV", root)
    entries, problems = [], []
    method_dirs = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and p.name not in MASK_DIRS]
    if not method_dirs:
        raise InputError("no method folders here (expected ROOT/<method>/<sequence>/…)", root)
    for method_dir in method_dirs:
        method = method_dir.name
        if (method_dir / "JPEGImages").is_dir():
            found = [(seq, frames, next((c for c in cands if c.exists()), None) or _mask_for(root, method_dir, seq, masks_root))
                     for seq, frames, cands in _davis_sequences(method_dir)]
        else:
            found = [(child.name if child.is_dir() else child.stem, child, None) for child in _frame_children(method_dir)]
            found = [(name, frames, _mask_for(root, method_dir, name, masks_root)) for name, frames, _ in found]
        if not found:
            problems.append(f"{method_dir}: no sequence folders or video files in this method folder")
        for name, frames, masks in found:
            entries.append(Entry(method, name, frames, masks, origin=str(frames)))
    return entries, problems


def _rows(path: Path) -> list[tuple[str, dict]]:
    """(origin, row) pairs of a CSV / JSON / JSONL list file."""
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return [(f"{path.name} line {i}", row) for i, row in enumerate(csv.DictReader(text.splitlines()), start=2)]
        if suffix == ".jsonl":
            return [(f"{path.name} line {i}", json.loads(line))
                    for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
        rows = json.loads(text)
    except (json.JSONDecodeError, csv.Error) as exc:
        raise InputError(f"not a valid {suffix[1:].upper()} list ({exc})", path) from None
    if not isinstance(rows, list):
        raise InputError("a JSON list file must hold a list of objects", path)
    return [(f"{path.name} item {i}", row) for i, row in enumerate(rows)]


def read_list(path: Path) -> tuple[list[Entry], list[str]]:
    """Entries of a list file (module docstring); every bad row is one problem."""
    entries, problems = [], []
    for origin, row in _rows(path):
        if not isinstance(row, dict):
            problems.append(f"{origin}: not an object with video, mask, method[, source, split]")
            continue
        row = {str(k).strip().lower(): str(v).strip() for k, v in row.items() if k is not None and v is not None}
        missing = [key for key in ("video", "mask", "method") if not row.get(key)]
        if missing:
            problems.append(f"{origin}: no {', '.join(missing)}")
            continue
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            problems.append(f"{origin}: split must be one of {SPLITS}, got {split!r}")
            continue
        video = path.parent / row["video"]
        source = row.get("source") or (video.name if video.is_dir() else video.stem)
        entries.append(Entry(row["method"], source, video, path.parent / row["mask"], split, origin))
    if not entries and not problems:
        problems.append(f"{path}: the list holds no rows")
    return entries, problems
