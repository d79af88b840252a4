"""Import an existing forged dataset (any inpainter, any detector's benchmark) as a vilocal dataset.

The result is read exactly like a forged dataset (:class:`~vilocal_dist.data.manifest.ForgedDataset`):
one manifest record per video with the fields ``vilocal forge`` writes, split by source video,
plus ``frames_path`` / ``masks_path`` (see ``ForgedDataset.video_paths``) and ``storage``::

    OUT/manifest.jsonl                         written last, in one atomic rename
    OUT/videos/<source>__<method>/provenance.json
    OUT/videos/<source>__<method>/frames/00000.jpg … (or video.mp4)   hard links (or copies)
    OUT/videos/<source>__<method>/masks/00000.png …  (or masks.mp4)

Files are hard-linked where the filesystem allows it; where it does not (another filesystem),
the record references the original files in place (``storage: reference``). Nothing is copied
unless asked (``copy=True``). Every entry is validated before anything is written, and all
problems are reported together (:class:`ImportProblems`); a crash mid-import leaves no manifest,
so the folder does not look like a dataset.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from vilocal_dist.data.layouts import Entry, discover, name_problem
from vilocal_dist.data.manifest import MANIFEST, ForgedDataset, package_versions, split_for, video_id
from vilocal_dist.errors import InputError, VilocalError
from vilocal_dist.video.io import image_header, iter_masks, list_image_files, probe

log = logging.getLogger(__name__)

STORAGE_MODES = ("link", "copy", "reference")
#: link() errors that mean "this filesystem pair cannot hard-link", not "the data is bad".
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}


class ImportProblems(InputError):
    """Every bad entry of an import, one report line each (the CLI prints them all, exit 2)."""

    def __init__(self, problems: Sequence[str], total: int) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s) in {total} video(s); nothing was imported")


@dataclass(frozen=True)
class Checked:
    """An entry that passed validation, with what the manifest records about it."""

    entry: Entry
    frames: int
    height: int
    width: int
    empty_mask_frames: int
    mean_mask_fraction: float


def _frame_info(frames: Path) -> tuple[int, int, int, list[str]]:
    """(count, height, width, problems) from every frame header (folder) or the stream (file)."""
    if not frames.exists():
        return 0, 0, 0, ["no such file or folder"]
    if frames.is_file():
        info = probe(frames)
        return info.num_frames, info.height, info.width, []
    files = list_image_files(frames)
    if not files:
        return 0, 0, 0, ["frame folder holds no images"]
    problems, sizes = [], []
    for file in files:
        try:
            sizes.append(image_header(file)[:2])
        except VilocalError as exc:
            problems.append(f"frame {file.name}: {exc.problem}")
    odd = [f.name for f, s in zip(files, sizes) if s != sizes[0]] if sizes else []
    if odd:
        problems.append(f"frames differ in size from the first ({sizes[0][1]}x{sizes[0][0]}): {_few(odd)}")
    height, width = sizes[0] if sizes else (0, 0)
    return len(files), height, width, problems


def _few(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def check_entry(entry: Entry) -> tuple[Checked | None, list[str]]:
    """Validate one entry: frames readable and of one size; one mask per frame, of that size,
    decodable, not all empty, none covering the whole frame. Returns (checked or None, problems)."""
    problems = [p for p in (name_problem("method", entry.method), name_problem("source", entry.source_video)) if p]
    try:
        count, height, width, frame_problems = _frame_info(entry.frames)
    except VilocalError as exc:
        count, height, width, frame_problems = 0, 0, 0, [exc.problem]
    problems += [f"{entry.frames}: {p}" for p in frame_problems]
    if entry.masks is None:
        return None, problems + [f"{entry.frames}: no masks found (for where they are looked for, see "
                                 "`vilocal data import --help`)"]
    if not entry.masks.exists():
        return None, problems + [f"{entry.masks}: no such mask folder or mask video"]
    if frame_problems:
        return None, problems
    files = list_image_files(entry.masks) if entry.masks.is_dir() else None
    if files is not None and len(files) != count:
        missing = sorted({p.stem for p in list_image_files(entry.frames)} - {p.stem for p in files}) if entry.frames.is_dir() else []
        hint = f" (none for {_few(missing)})" if missing else ""
        return None, problems + [f"{entry.masks}: {len(files)} masks for {count} frames{hint}"]
    fractions, full, wrong_size, n = [], [], [], 0
    try:
        for n, mask in enumerate(iter_masks(entry.masks), start=1):
            name = files[n - 1].name if files else f"frame {n - 1}"
            if mask.shape != (height, width):
                wrong_size.append(f"{name} is {mask.shape[1]}x{mask.shape[0]}")
                continue
            fractions.append(float(mask.mean()))
            if mask.all():
                full.append(name)
    except VilocalError as exc:
        return None, problems + [f"{exc.path or entry.masks}: {exc.problem}"]
    if wrong_size:
        problems.append(f"{entry.masks}: masks differ from the frames' {width}x{height}: {_few(wrong_size)}")
    if files is None and n != count:
        problems.append(f"{entry.masks}: {n} masks for {count} frames")
    if full:
        problems.append(f"{entry.masks}: mask covers the whole frame (inverted masks?): {_few(full)}")
    if fractions and max(fractions) == 0.0:
        problems.append(f"{entry.masks}: every mask is empty (nothing marked as inpainted)")
    if problems:
        return None, problems
    empty = sum(1 for f in fractions if f == 0.0)
    return Checked(entry, count, height, width, empty, float(np.mean(fractions))), []


def validate(entries: Sequence[Entry], *, progress: bool = False) -> tuple[list[Checked], list[str]]:
    """Check every entry (nothing stops at the first problem); duplicate ids and conflicting
    splits of one source video are problems too."""
    problems: list[str] = []
    ids = Counter(video_id(e.source_video, e.method) for e in entries)
    for vid, n in sorted(ids.items()):
        if n > 1:
            where = [e.origin for e in entries if video_id(e.source_video, e.method) == vid]
            problems.append(f"{vid}: {n} entries for one (source, method): {_few(where)}")
    splits: dict[str, set[str]] = {}
    for e in entries:
        if e.split:
            splits.setdefault(e.source_video, set()).add(e.split)
    problems += [f"source {s!r}: given both splits; every method's video of one source must share a split"
                 for s, found in sorted(splits.items()) if len(found) > 1]
    checked = []
    for entry in tqdm(entries, desc="validate", unit="video", disable=not progress):
        ok, found = check_entry(entry)
        problems += [f"[{entry.method}/{entry.source_video}] {p}" for p in found]
        if ok is not None:
            checked.append(ok)
    return checked, problems


def _place(src: Path, dest: Path, mode: str) -> None:
    """Hard-link (or copy) ``src`` — a file, or a folder of images renamed 00000.ext … — to ``dest``."""
    put = os.link if mode == "link" else shutil.copy2
    if src.is_file():
        put(src, dest)
        return
    dest.mkdir()
    for index, file in enumerate(list_image_files(src)):
        put(file, dest / f"{index:05d}{file.suffix.lower()}")


def _store(item: Checked, folder: Path, mode: str) -> tuple[str, Path, Path]:
    """Put one video's files into ``folder`` (fresh); returns (storage mode used, frames, masks)."""
    entry = item.entry
    frames = folder / ("frames" if entry.frames.is_dir() else f"video{entry.frames.suffix.lower()}")
    masks = folder / ("masks" if entry.masks.is_dir() else f"masks{entry.masks.suffix.lower()}")
    if mode != "reference":
        try:
            _place(entry.frames, frames, mode)
            _place(entry.masks, masks, mode)
            return mode, frames, masks
        except OSError as exc:
            if mode != "link" or exc.errno not in _NO_LINK:
                raise
            log.warning("%s: cannot hard-link here (%s); referencing the files in place", entry.frames, exc.strerror)
            for path in (frames, masks):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return "reference", entry.frames.resolve(), entry.masks.resolve()


def _record(item: Checked, out: Path, storage: str, frames: Path, masks: Path, split: str, seed: int) -> dict[str, Any]:
    entry, vid = item.entry, video_id(item.entry.source_video, item.entry.method)
    rel = (lambda p: str(p.relative_to(out))) if storage != "reference" else str
    return {
        "id": vid, "source_video": entry.source_video, "source": str(entry.frames.resolve()),
        "method": entry.method, "split": split, "config": {}, "seed": seed, "metrics": {},
        "size": [item.height, item.width], "max_frames": None,
        "frames": item.frames, "height": item.height, "width": item.width, "path": f"videos/{vid}",
        "frames_path": rel(frames), "masks_path": rel(masks), "storage": storage,
        "imported": {"frames": str(entry.frames.resolve()), "masks": str(entry.masks.resolve()),
                     "empty_mask_frames": item.empty_mask_frames,
                     "mean_mask_fraction": round(item.mean_mask_fraction, 6)},
        "versions": package_versions(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _write_manifest(out: Path, records: Sequence[dict[str, Any]]) -> None:
    """All records at once: a temp file, fsynced, renamed over ``manifest.jsonl`` (dir fsynced)."""
    tmp = out / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / MANIFEST)
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def import_dataset(
    source: str | Path,
    out: str | Path,
    *,
    masks: str | Path | None = None,
    mode: str = "link",
    test_fraction: float = 0.2,
    seed: int = 0,
    methods: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Discover, validate and write the dataset; returns a summary. Raises :class:`ImportProblems`
    (every problem listed, nothing written) or InputError for an unusable ``source`` / ``out``."""
    if mode not in STORAGE_MODES:
        raise ValueError(f"mode must be one of {STORAGE_MODES}, got {mode!r}")
    out = Path(out).expanduser()
    if (out / MANIFEST).exists():
        raise InputError(f"already holds a dataset ({MANIFEST}); import into a new folder", out)
    entries, problems = discover(source, masks)
    if methods:
        entries = [e for e in entries if e.method in methods]
        known = sorted({e.method for e in entries})
        problems += [f"--methods: no videos of method {m!r} found" for m in methods if m not in known]
    if not entries and not problems:
        problems.append(f"{source}: no videos found")
    checked, found = validate(entries, progress=progress)
    problems += found
    if problems:
        raise ImportProblems(problems, len(entries))

    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    records, stored = [], Counter()
    for item in tqdm(checked, desc="import", unit="video", disable=not progress):
        entry = item.entry
        vid = video_id(entry.source_video, entry.method)
        folder = videos / vid
        if folder.exists():  # left by an import that died before its manifest: not part of any dataset
            shutil.rmtree(folder)
        folder.mkdir()
        storage, frames_path, masks_path = _store(item, folder, mode)
        stored[storage] += 1
        split = entry.split or split_for(entry.source_video, test_fraction, seed)
        record = _record(item, out, storage, frames_path, masks_path, split, seed)
        (folder / "provenance.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        records.append(record)
    _write_manifest(out, records)
    dataset = ForgedDataset(out)
    return {
        "out": str(out.resolve()),
        "videos": len(records),
        "frames": sum(r["frames"] for r in records),
        "methods": dict(sorted(Counter(r["method"] for r in records).items())),
        "splits": {s: len(dataset.records(split=s)) for s in ("train", "test")},
        "sources": len({r["source_video"] for r in records}),
        "storage": dict(stored),
        "empty_mask_frames": sum(r["imported"]["empty_mask_frames"] for r in records),
    }
