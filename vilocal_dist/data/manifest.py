"""The forged-dataset layout: lossless forged videos plus an append-only manifest.

::

    DIR/manifest.jsonl                      one JSON record per COMPLETE video
    DIR/videos/<id>/frames/00000.png …      lossless RGB
    DIR/videos/<id>/masks/00000.png …       0/255 (255 = inpainted)
    DIR/videos/<id>/provenance.json         the record itself
    DIR/videos/.tmp-<id>-<random>/          a video being written (hidden; not part of the dataset)
    DIR/.videos.lock                        lock for creating and sweeping those temp folders

A video's files are written under ``videos/.tmp-<id>-<random>`` and fsynced; then, under an
exclusive lock on the manifest, the folder is renamed into place (the directory fsynced) and only
then is its record appended (one whole line, fsynced). A crash, even of the machine, therefore
leaves either nothing in the manifest or a complete video; readers ignore a trailing partial line.
Many workers may write to one dataset at once.

Leftovers of dead writers are removed by the next writer: each temp folder holds a ``.writer``
file its writer keeps flock-ed, and the kernel drops that lock when the writer dies (SIGKILL
included), so a temp folder whose lock can be taken is garbage. Folders are created and swept
under ``.videos.lock`` so that a sweep never sees a folder without its lock yet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vilocal_dist.video.io import write_png_folder

try:  # POSIX advisory locks; on other systems appends rely on O_APPEND alone.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
TMP_PREFIX = ".tmp-"
_WRITER = ".writer"  # inside a temp folder: flock-ed by its live writer
_FOLDERS_LOCK = ".videos.lock"  # next to the manifest: creating and sweeping temp folders
SPLITS = ("train", "test")
REQUIRED_FIELDS = ("source_video", "source", "method", "split", "config", "seed")
_VERSIONED_PACKAGES = (
    "vilocal_dist", "numpy", "torch", "av", "opencv-python-headless", "scikit-image", "ray", "mlflow",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape a forged video (read from metadata, no imports)."""
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def split_for(source_video: str, test_fraction: float, seed: int = 0) -> str:
    """'train' or 'test' from a hash of (seed, source video): every method's forgery of one source
    video lands in the same split, so a detector is never tested on a scene it trained on."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    digest = hashlib.sha256(f"{seed}:{source_video}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if unit < test_fraction else "train"


def video_id(source_video: str, method: str) -> str:
    return f"{source_video}__{method}"


class ForgedDataset:
    """Read access to a forged dataset folder (it need not exist yet)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def video_dir(self, id: str) -> Path:
        return self.root / "videos" / id

    def video_paths(self, record: dict[str, Any]) -> tuple[Path, Path | None]:
        """(frames, masks) to open ``record``'s video with (``data.sources.open_source`` / ClipDataset).

        A forged video is its folder (masks inside: None). An imported video names its frame
        folder or video file and its mask folder or mask video (``frames_path`` / ``masks_path``,
        relative to the dataset, or absolute where the import referenced files in place).
        """
        if "frames_path" in record:
            return self.root / record["frames_path"], self.root / record["masks_path"]
        return self.video_dir(record["id"]), None

    def records(self, split: str | None = None, methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Complete videos in manifest order (first record wins for a duplicated id)."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        seen, out = set(), []
        for record in self._read():
            if record["id"] in seen:
                continue
            seen.add(record["id"])
            if split is not None and record.get("split") != split:
                continue
            if methods is not None and record.get("method") not in methods:
                continue
            out.append(record)
        return out

    def completed_ids(self) -> set[str]:
        return {record["id"] for record in self._read()}

    def _read(self) -> list[dict[str, Any]]:
        if not self.manifest_path.exists():
            return []
        text = self.manifest_path.read_text(encoding="utf-8")
        lines = text.split("\n")
        # The last element is "" after a complete final line, or a partial line from a writer that
        # died (or is still writing) mid-append: either way it is not a record.
        records = []
        for number, line in enumerate(lines[:-1], start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or "id" not in record:
                # The remains of a writer that died mid-append (later writers start a fresh line).
                log.warning("%s: line %d is not a video record; ignored", self.manifest_path, number)
                continue
            records.append(record)
        return records


@contextmanager
def _flocked(path: Path, flags: int = os.O_RDWR | os.O_CREAT) -> Iterator[int]:
    """An fd on ``path`` held under an exclusive flock until the block ends."""
    fd = os.open(path, flags, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # also releases the lock


def _writer_alive(folder: Path) -> bool:
    """Whether the writer of temp folder ``folder`` still runs (holds the lock on its ``.writer``)."""
    try:
        fd = os.open(folder / _WRITER, os.O_RDWR)
    except FileNotFoundError:
        return False  # created under the folders lock with its .writer: only a dead writer's lacks it
    except OSError:
        return True  # unreadable: not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _sweep_dead(videos: Path) -> list[str]:
    """Remove the temp folders of writers that died; returns their names. Call under the folders lock."""
    removed = []
    for entry in sorted(videos.iterdir()):
        if entry.name.startswith(TMP_PREFIX) and entry.is_dir() and not _writer_alive(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        log.info("%s: removed temp folders of writers that died: %s", videos, removed)
    return removed


def _claim_tmp(dataset: ForgedDataset, vid: str) -> tuple[Path, int]:
    """A fresh temp folder for ``vid`` and the fd whose flock marks its writer alive (close it when
    done). Sweeps dead writers' folders first: this is how a rerun cleans up after a crash."""
    videos = dataset.root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # no way to tell a live writer from a dead one: sweep nothing
        tmp = videos / f"{TMP_PREFIX}{vid}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        return tmp, os.open(tmp / _WRITER, os.O_RDWR | os.O_CREAT, 0o644)
    with _flocked(dataset.root / _FOLDERS_LOCK):
        _sweep_dead(videos)
        tmp = videos / f"{TMP_PREFIX}{vid}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        fd = os.open(tmp / _WRITER, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return tmp, fd


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folders themselves, so a rename published after this
    can never point at data a power loss would take back."""
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        _fsync(path)


def _publish(dataset: ForgedDataset, tmp: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Move the finished folder ``tmp`` to videos/<id>, then append ``record`` as one line.

    Both happen under an exclusive lock on the manifest, so two writers of the same id cannot
    interleave: the second finds the id completed and returns the first one's record. A folder
    at videos/<id> without a record (its writer died between rename and append) is replaced.
    """
    with _flocked(dataset.manifest_path, os.O_RDWR | os.O_APPEND | os.O_CREAT) as fd:
        for existing in dataset.records():
            if existing["id"] == record["id"]:
                return existing
        final = dataset.video_dir(record["id"])
        stale = final.with_name(f"{TMP_PREFIX}{record['id']}-{uuid.uuid4().hex[:8]}-stale")
        if final.exists():
            os.replace(final, stale)  # aside in one step: videos/<id> is never half-deleted
        os.replace(tmp, final)
        (final / _WRITER).unlink()
        _fsync(final.parent)  # the rename is durable before the record that announces it
        if stale.exists():
            shutil.rmtree(stale, ignore_errors=True)
        line = (json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        # A partial line left by a crashed writer would glue onto ours: start on a fresh line.
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
        return record


def write_forged_video(
    root: str | Path, record: dict[str, Any], frames: np.ndarray, masks: np.ndarray
) -> dict[str, Any]:
    """Store one forged video and append its manifest record; returns the full record.

    ``record`` holds at least source_video, source, method, split, config, seed; id, frames,
    height, width, path, versions and created are filled in. frames: uint8 T×H×W×3 RGB,
    masks: bool T×H×W. Idempotent: an id already in the manifest is skipped (its record returned).
    """
    missing = [field for field in REQUIRED_FIELDS if field not in record]
    if missing:
        raise ValueError(f"forged video record lacks {missing}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 T×H×W×3, got {frames.dtype} {frames.shape}")
    if masks.shape != frames.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match frames {frames.shape[:3]}")
    if record["split"] not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {record['split']!r}")
    dataset = ForgedDataset(root)
    vid = video_id(record["source_video"], record["method"])
    for existing in dataset.records():
        if existing["id"] == vid:
            log.info("forged video %s already complete, skipping", vid)
            return existing

    full = {
        **record,
        "id": vid,
        "frames": int(frames.shape[0]),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "path": f"videos/{vid}",
        "versions": record.get("versions") or package_versions(),
        "created": record.get("created") or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp, writer = _claim_tmp(dataset, vid)
    try:
        write_png_folder(tmp / "frames", frames)
        write_png_folder(tmp / "masks", masks.astype(bool))
        (tmp / "provenance.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        return _publish(dataset, tmp, full)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        os.close(writer)  # after the removal: a sweep must never see this folder unlocked
