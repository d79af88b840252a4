"""The forged-dataset layout: lossless forged videos plus an append-only manifest, on any storage
root (local folder, NFS, ``s3://``, ``gs://``; see ``vilocal_dist.storage``).

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

Writing is two steps, so that the process that forges a video need not be the one that owns the
manifest (on a cluster the Tune driver publishes what the trials store; no lock spans nodes):

* ``store_video`` puts a video's objects in place and returns its record. Locally as above
  (temp folder, rename); on an object store the frames and masks are uploaded from a node-local
  scratch folder first and ``provenance.json`` last: that object marks the video complete.
* ``publish`` appends records to the manifest, only for videos whose ``provenance.json`` exists.
  Locally under the flock, appending one fsynced line per record; on an object store the whole
  manifest is rewritten as one put, so the publisher must be the dataset's only writer (the forge
  driver, an import).

``write_forged_video`` does both. A stored video whose record never made it to the manifest (its
publisher died) is not redone: ``stored_record`` finds it and the next publish lists it.

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
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vilocal_dist import storage
from vilocal_dist.video.io import write_png_folder

try:  # POSIX advisory locks; on other systems appends rely on O_APPEND alone.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
PROVENANCE = "provenance.json"  # in a video's folder; written last, so it marks the video complete
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
    """Read access to a forged dataset at a local folder or a storage URI (it need not exist yet).

    ``root``, ``manifest_path`` and ``video_dir`` are ``Path``s for a local dataset and URI
    strings for a remote one; ``local_copy`` gives a local folder either way.
    """

    def __init__(self, root: str | Path) -> None:
        self.uri = storage.normalize(root)
        self.remote = storage.is_remote(self.uri)
        self.root: Path | str = self.uri if self.remote else Path(self.uri)

    @property
    def manifest_path(self) -> Path | str:
        return storage.join(self.uri, MANIFEST) if self.remote else self.root / MANIFEST

    def video_dir(self, id: str) -> Path | str:
        return storage.join(self.uri, "videos", id) if self.remote else self.root / "videos" / id

    def video_paths(self, record: dict[str, Any]) -> tuple[Path | str, Path | str | None]:
        """(frames, masks) to open ``record``'s video with (``data.sources.open_source`` / ClipDataset).

        A forged video is its folder (masks inside: None). An imported video names its frame
        folder or video file and its mask folder or mask video (``frames_path`` / ``masks_path``,
        relative to the dataset, or absolute where the import referenced files in place).
        """
        if "frames_path" in record:
            return self._under(record["frames_path"]), self._under(record["masks_path"])
        return self.video_dir(record["id"]), None

    def _under(self, rel: str) -> Path | str:
        """A path of the manifest (relative to the dataset, or absolute) as a path or URI."""
        return storage.join(self.uri, rel) if self.remote and not Path(rel).is_absolute() else Path(self.root) / rel

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

    def local_copy(self, records: Sequence[dict[str, Any]] | None = None) -> Path:
        """A local folder with this layout holding the manifest and the videos of ``records``
        (default: all): the dataset itself when local, else a node-local cached copy."""
        if not self.remote:
            return Path(self.root)
        records = self.records() if records is None else records
        only = [MANIFEST]
        for r in records:  # a forged video's folder, or an imported one's frame and mask paths
            only += [r[k] for k in ("frames_path", "masks_path") if k in r] or [f"videos/{r['id']}"]
        return storage.local_copy(self.uri, only=[p for p in only if not Path(p).is_absolute()])

    def _read(self) -> list[dict[str, Any]]:
        if self.remote:
            text = storage.read_text(self.manifest_path) if storage.exists(self.manifest_path) else ""
        elif self.manifest_path.exists():
            text = self.manifest_path.read_text(encoding="utf-8")
        else:
            return []
        return _parse(text, str(self.manifest_path))


def _parse(text: str, where: str) -> list[dict[str, Any]]:
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
            log.warning("%s: line %d is not a video record; ignored", where, number)
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
    # Names first: a dataset of 10,000 videos is listed on every store, so no Path per entry.
    with os.scandir(videos) as entries:
        temps = sorted(e.name for e in entries if e.name.startswith(TMP_PREFIX) and e.is_dir())
    for name in temps:
        entry = videos / name
        if not _writer_alive(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(name)
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


def stored_record(root: str | Path, vid: str) -> dict[str, Any] | None:
    """The record of video ``vid`` if its objects are complete at ``root`` (published or not)."""
    marker = storage.join(root, "videos", vid, PROVENANCE)
    try:
        return json.loads(storage.read_text(marker))
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # absent, or (locally) a folder from before the marker convention


def _place(dataset: ForgedDataset, tmp: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Move the finished local folder ``tmp`` to videos/<id>; returns the stored record.

    Under the manifest's lock, so two writers of one id cannot interleave: the second finds the
    video stored and returns the first one's record. A folder at videos/<id> without its marker
    (left by an older layout) is replaced.
    """
    with _flocked(dataset.manifest_path, os.O_RDWR | os.O_APPEND | os.O_CREAT):
        final = dataset.video_dir(record["id"])
        existing = stored_record(dataset.root, record["id"])
        if existing is not None:
            return existing
        stale = final.with_name(f"{TMP_PREFIX}{record['id']}-{uuid.uuid4().hex[:8]}-stale")
        if final.exists():
            os.replace(final, stale)  # aside in one step: videos/<id> is never half-deleted
        os.replace(tmp, final)
        (final / _WRITER).unlink()
        storage.fsync_path(final.parent)  # the rename is durable before the record that announces it
        if stale.exists():
            shutil.rmtree(stale, ignore_errors=True)
        return record


def _store_remote(dataset: ForgedDataset, record: dict[str, Any], frames: np.ndarray, masks: np.ndarray) -> None:
    """Upload a video from a node-local scratch folder: frames and masks, then its marker."""
    scratch = storage.scratch_dir() / "forge"
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{record['id']}-", dir=scratch))
    try:
        write_png_folder(tmp / "frames", frames)
        write_png_folder(tmp / "masks", masks.astype(bool))
        (tmp / PROVENANCE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        storage.upload_folder(tmp, dataset.video_dir(record["id"]), last=(PROVENANCE,))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(root: str | Path, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append ``records`` (from ``store_video``, or imported ones naming ``frames_path`` /
    ``masks_path``) to the manifest; returns each id's record as the manifest now has it (an id
    already listed keeps its first record). A record whose video is not completely stored raises
    ValueError: the manifest never lists what is not there."""
    dataset = ForgedDataset(root)
    for record in records:
        if not _is_stored(dataset, record):
            raise ValueError(f"{dataset.video_dir(record['id'])}: not completely stored; not publishing {record['id']}")
    if dataset.remote:
        path = dataset.manifest_path
        text = storage.read_text(path) if storage.exists(path) else ""
        listed: dict[str, dict[str, Any]] = {}
        for record in _parse(text, path):
            listed.setdefault(record["id"], record)
        new = []
        for record in records:
            if record["id"] not in listed:
                listed[record["id"]] = record
                new.append(record)
        if new:  # one put of the whole manifest: readers see the old one or the new one
            lead = "\n" if text and not text.endswith("\n") else ""
            storage.write_text(path, text + lead + "".join(_line(r) for r in new))
        return [listed[r["id"]] for r in records]
    dataset.root.mkdir(parents=True, exist_ok=True)
    with _flocked(dataset.manifest_path, os.O_RDWR | os.O_APPEND | os.O_CREAT) as fd:
        listed = {r["id"]: r for r in dataset.records()}
        out = []
        for record in records:
            if record["id"] in listed:
                out.append(listed[record["id"]])
                continue
            line = _line(record).encode("utf-8")
            # A partial line left by a crashed writer would glue onto ours: start on a fresh line.
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
            listed[record["id"]] = record
            out.append(record)
        return out


def _is_stored(dataset: ForgedDataset, record: dict[str, Any]) -> bool:
    """A forged video: its marker exists. An imported one (``frames_path``): its files exist."""
    if "frames_path" in record:
        return all(storage.exists(p) for p in dataset.video_paths(record))
    return stored_record(dataset.root, record["id"]) is not None


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"


def store_video(root: str | Path, record: dict[str, Any], frames: np.ndarray, masks: np.ndarray) -> dict[str, Any]:
    """Store one forged video's objects (not yet listed in the manifest); returns the full record.

    ``record`` holds at least source_video, source, method, split, config, seed; id, frames,
    height, width, path, versions and created are filled in. frames: uint8 T×H×W×3 RGB,
    masks: bool T×H×W. A video already stored completely is kept (its record returned).
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
    existing = stored_record(dataset.root, vid)
    if existing is not None:
        if not dataset.remote:  # a writer killed right after its rename left its lock file
            (dataset.video_dir(vid) / _WRITER).unlink(missing_ok=True)
        log.info("forged video %s already stored, keeping it", vid)
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
    if dataset.remote:
        _store_remote(dataset, full, frames, masks)
        return full
    tmp, writer = _claim_tmp(dataset, vid)
    try:
        write_png_folder(tmp / "frames", frames)
        write_png_folder(tmp / "masks", masks.astype(bool))
        (tmp / PROVENANCE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        storage.fsync_tree(tmp)
        return _place(dataset, tmp, full)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        os.close(writer)  # after the removal: a sweep must never see this folder unlocked


def write_forged_video(
    root: str | Path, record: dict[str, Any], frames: np.ndarray, masks: np.ndarray
) -> dict[str, Any]:
    """Store one forged video and append its manifest record (``store_video`` + ``publish``);
    returns the full record. Idempotent: an id already in the manifest is skipped (its record
    returned)."""
    for existing in ForgedDataset(root).records():
        if existing["id"] == video_id(record.get("source_video", ""), record.get("method", "")):
            log.info("forged video %s already complete, skipping", existing["id"])
            return existing
    return publish(root, [store_video(root, record, frames, masks)])[0]
