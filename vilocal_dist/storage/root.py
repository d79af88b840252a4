"""A storage root named by a local path, an NFS path, ``file://`` or an object-store URI
(``s3://bucket/prefix``, ``gs://bucket/prefix``), opened with ``pyarrow.fs`` like Ray does.

S3 endpoints and credentials come from the standard AWS variables, which pyarrow's S3 client
honours (``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, …); Ray's
``RunConfig(storage_path="s3://…")`` resolves the same way, so one environment serves both.

Writes are atomic per file: locally a temp file, fsync and ``os.replace``; on an object store a
single object put (an object appears whole or not at all). A group of files is published by
writing the payload first and a completion marker last (``upload_folder(last=…)``): readers
trust the marker, never a listing.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import pyarrow.fs as pafs

from vilocal_dist.storage.local import atomic_write_bytes

_UPLOAD_THREADS = 8  # object puts are latency-bound: a few in flight hide the round trips


class FileEntry(NamedTuple):
    """One file under a folder or prefix: path relative to it, size, modification time."""

    rel: str
    size: int
    mtime_ns: int


def is_remote(root: str | Path) -> bool:
    """Whether ``root`` is an object-store (or any non-local) URI."""
    text = str(root)
    scheme = urlparse(text).scheme
    # "scheme://" only: one letter is a Windows drive, and "composed:…" / "models:/…" are not
    # storage (built-in videos, registered models).
    return "://" in text and len(scheme) > 1 and scheme != "file"


def normalize(root: str | Path) -> str:
    """A URI as given (no trailing slash), a local path made absolute (``file://`` stripped)."""
    text = str(root)
    if is_remote(text):
        return text.rstrip("/")
    if text.startswith("file://"):
        text = urlparse(text).path
    return str(Path(text).expanduser().resolve())


def join(root: str | Path, *parts: str) -> str:
    """``root/part/…`` for paths and URIs alike."""
    return "/".join([normalize(root)] + [p.strip("/") for p in parts if p])


_CLIENT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE")


@functools.lru_cache(maxsize=16)
def _filesystem(base: str, env: tuple[str, ...]) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(base)[0]


def resolve(root: str | Path) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for ``root``; one client per bucket is reused."""
    text = normalize(root)
    if not is_remote(text):
        return pafs.LocalFileSystem(), text
    parsed = urlparse(text)
    env = tuple(os.environ.get(key, "") for key in _CLIENT_ENV)  # a changed endpoint gets a new client
    return _filesystem(f"{parsed.scheme}://{parsed.netloc}", env), f"{parsed.netloc}{parsed.path}".rstrip("/")


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """The URI of ``path`` inside ``fs`` (Ray's checkpoints carry a filesystem and a bare path)."""
    scheme = {"s3": "s3", "gcs": "gs"}.get(fs.type_name)
    return f"{scheme}://{path}" if scheme else path


def exists(uri: str | Path) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str | Path) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str | Path) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Replace the file at ``uri`` atomically: readers see the old content or the new, whole."""
    if not is_remote(uri):
        atomic_write_bytes(normalize(uri), data)
        return
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as f:  # one put (or one completed multipart upload)
        f.write(data)


def write_text(uri: str | Path, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def list_files(uri: str | Path) -> list[FileEntry]:
    """Every file under folder/prefix ``uri`` (recursive, sorted); [] when there is none."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(
        FileEntry(info.path[len(path):].lstrip("/"), info.size or 0, info.mtime_ns or 0)
        for info in infos
        if info.type == pafs.FileType.File
    )


def upload_folder(local: str | Path, uri: str | Path, *, last: tuple[str, ...] = ()) -> list[str]:
    """Copy every file of folder ``local`` to ``uri`` (same relative paths); the files named in
    ``last`` (relative paths) go after all others, so they can mark the group complete. Each file
    is written atomically; returns the relative paths in upload order."""
    local = Path(local)
    files = sorted(str(p.relative_to(local)).replace(os.sep, "/") for p in local.rglob("*") if p.is_file())
    first = [rel for rel in files if rel not in last]
    final = [rel for rel in last if rel in files]

    def put(rel: str) -> None:
        write_bytes(join(uri, rel), (local / rel).read_bytes())

    with ThreadPoolExecutor(_UPLOAD_THREADS) as pool:
        list(pool.map(put, first))  # list(): re-raise the first failure
    for rel in final:
        put(rel)
    return first + final
