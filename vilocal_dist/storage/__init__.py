"""The storage root: one place (local folder, NFS, ``s3://``, ``gs://``) for everything a job
writes or reads, through ``pyarrow.fs`` (the filesystem layer Ray itself uses), plus node-local
scratch and cache folders. Bottom layer: imports nothing of the package."""

from vilocal_dist.storage.cache import cache_dir, local_copy, scratch_dir
from vilocal_dist.storage.local import atomic_write_bytes, atomic_write_text, fsync_path, fsync_tree
from vilocal_dist.storage.root import (
    exists,
    is_remote,
    join,
    list_files,
    normalize,
    read_bytes,
    read_text,
    resolve,
    upload_folder,
    uri_of,
    write_bytes,
    write_text,
)

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "cache_dir",
    "exists",
    "fsync_path",
    "fsync_tree",
    "is_remote",
    "join",
    "list_files",
    "local_copy",
    "normalize",
    "read_bytes",
    "read_text",
    "resolve",
    "scratch_dir",
    "upload_folder",
    "uri_of",
    "write_bytes",
    "write_text",
]
