"""Node-local scratch and cache folders, and cached copies of remote files.

Scratch (``$VILOCAL_SCRATCH``, default ``<tmp>/vilocal-scratch-<uid>``) holds what one process
writes before uploading it and the download cache (``<scratch>/cache``). Both are per node and
disposable: the storage root is the truth, the cache an optimisation. A cached file is reused
when its size and modification time equal the remote object's (``os.utime`` stamps the copy).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

import pyarrow.fs as pafs

from vilocal_dist.storage.root import is_remote, join, list_files, normalize, resolve


def scratch_dir() -> Path:
    """This node's scratch folder (created)."""
    default = Path(tempfile.gettempdir()) / f"vilocal-scratch-{os.getuid()}"
    path = Path(os.environ.get("VILOCAL_SCRATCH") or default).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """This node's download cache (created)."""
    path = scratch_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fetch(uri: str, dest: Path, size: int, mtime_ns: int) -> None:
    """Download ``uri`` to ``dest`` unless the cached copy matches (size, mtime)."""
    try:
        st = dest.stat()
        if st.st_size == size and st.st_mtime_ns == mtime_ns:
            return
    except FileNotFoundError:
        pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    fs, path = resolve(uri)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as src:
            while chunk := src.read(1 << 22):
                out.write(chunk)
        os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, dest)  # concurrent downloaders on one node never see a partial file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def local_copy(uri: str | Path, only: Sequence[str] | None = None) -> Path:
    """A local path holding the file or folder ``uri``: the path itself when local, else a cached
    copy under ``cache_dir()`` (refreshed file by file). ``only``: relative subpaths (files or
    folders) to fetch instead of the whole folder."""
    if not is_remote(uri):
        return Path(normalize(uri))
    uri = normalize(uri)
    fs, path = resolve(uri)
    dest = cache_dir() / hashlib.sha1(uri.encode()).hexdigest()[:16]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        target = dest / Path(path).name
        _fetch(uri, target, info.size or 0, info.mtime_ns or 0)
        return target
    if info.type == pafs.FileType.NotFound and only is None:
        raise FileNotFoundError(f"{uri}: no such file or folder")
    for sub in only if only is not None else [""]:
        sub_info = fs.get_file_info(f"{path}/{sub}".rstrip("/")) if sub else info
        if sub_info.type == pafs.FileType.File:
            _fetch(join(uri, sub), dest / sub, sub_info.size or 0, sub_info.mtime_ns or 0)
            continue
        for entry in list_files(join(uri, sub)):
            rel = f"{sub}/{entry.rel}" if sub else entry.rel
            _fetch(join(uri, rel), dest / rel, entry.size, entry.mtime_ns)
    dest.mkdir(parents=True, exist_ok=True)
    return dest
