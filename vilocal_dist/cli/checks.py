"""Driver-side input checks, run before Ray starts: every problem is one line and exit 2.

Trials and Ray Train workers run in other processes, often on other nodes, with another working
directory. So a relative path is resolved here, against the caller's folder, before it is handed
to them; sources are opened here (headers only) and must have the masks inpainting needs; output
folders must be folders this user can write. Remote storage URIs (``s3://``, ``gs://``, …) are
checked for a known scheme only: their existence is the storage layer's business.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from vilocal_dist.errors import ConfigError, InputError

#: URI schemes of the filesystems Ray storage and pyarrow.fs understand.
KNOWN_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file")


def is_uri(value: str | Path) -> bool:
    return "://" in str(value)


def check_uri(value: str, flag: str) -> str:
    scheme = value.split("://", 1)[0].lower()
    if scheme not in KNOWN_SCHEMES:
        raise ConfigError(f"{flag} {value}: unknown storage scheme {scheme!r} (known: {', '.join(KNOWN_SCHEMES)})")
    return value


def absolute(value: str | Path) -> str:
    """A local path made absolute against the caller's folder (``~`` expanded); URIs and built-in
    ``composed:`` sources unchanged."""
    text = str(value)
    if is_uri(text) or text.startswith("composed:"):
        return text
    return str(Path(text).expanduser().resolve())


def output_dir(value: str | Path, flag: str = "--out") -> str:
    """An output folder: absolute, a folder (or not yet there) under a folder this user can write."""
    if is_uri(value):
        return check_uri(str(value), flag)
    path = Path(absolute(value))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} names an existing file, not a folder", path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{flag}: {existing} is a file, so no folder can be made below it", path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: {existing} is not writable", path)
    return str(path)


def input_path(value: str | Path, flag: str, must_exist: bool = True) -> str:
    """An input file or folder: absolute, and there unless ``must_exist`` is False (then the
    reader says what is missing). URIs: a known scheme only."""
    if is_uri(value):
        return check_uri(str(value), flag)
    path = Path(absolute(value))
    if must_exist and not path.exists():
        raise InputError(f"{flag}: no such file or folder", path)
    return str(path)


def video_sources(items: Sequence[str], flag: str = "--sources") -> list[str]:
    """Sources that forging or an inpainting sweep can use, made absolute: each opens (headers
    only) and every video in it has masks (the regions the methods inpaint)."""
    from vilocal_dist.data.sources import is_davis_root, list_sequences, open_source

    out = []
    for item in items:
        spec = absolute(item)
        if is_uri(spec):
            out.append(check_uri(spec, flag))
            continue
        if spec.startswith("composed:"):  # built in, with masks; generated (and parsed) in the trial
            out.append(spec)
            continue
        opened = [open_source(spec, seq=s) for s in list_sequences(spec)] if is_davis_root(spec) else [open_source(spec)]
        for src in opened:
            if not src.has_masks:
                raise InputError("no masks for this video: inpainting needs the masked regions (DAVIS Annotations/"
                                 "Masks, a forged video folder, or composed:SEED)", src.spec)  # fmt: skip
        out.append(spec)
    return out


def checkpoint_path(value: str | Path, flag: str) -> str:
    """A checkpoint folder or model.pt that exists (absolute)."""
    from vilocal_dist.engines.checkpoint import CHECKPOINT_FILE

    if is_uri(value):
        return check_uri(str(value), flag)
    path = Path(absolute(value))
    if not (path / CHECKPOINT_FILE).is_file() and not path.is_file():
        raise InputError(f"{flag}: checkpoint not found (a folder with {CHECKPOINT_FILE}, or the file)", path)
    return str(path)


INPAINT_SWEEP = "inpaint-regularizers"


def sweep_inputs(specs: Sequence[Any]) -> None:
    """Per-video inpainting sweeps: their sources exist and have masks, before Ray starts."""
    for spec in specs:
        if spec.kind.name == INPAINT_SWEEP and spec.data.sources:
            video_sources([str(s) for s in spec.data.sources], flag=f"{spec.path}: data.sources")


def sweep_gpus(specs: Sequence[Any], gpus_per_trial: float | None) -> list[Any]:
    """``--gpus-per-trial`` over ``resources.gpus_per_trial`` of every per-video inpainting sweep
    (training sweeps give each Ray Train worker one GPU instead)."""
    if gpus_per_trial is None:
        return list(specs)
    if gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial:g}")
    if not any(s.kind.name == INPAINT_SWEEP for s in specs):
        raise ConfigError(f"--gpus-per-trial applies to {INPAINT_SWEEP} sweeps; training sweeps give each "
                          "Ray Train worker one GPU when the cluster has or can start GPUs")  # fmt: skip
    return [replace(s, resources=replace(s.resources, gpus_per_trial=gpus_per_trial)) if s.kind.name == INPAINT_SWEEP
            else s for s in specs]  # fmt: skip


def sweep_resources(specs: Sequence[Any]) -> None:
    """Each per-video inpainting sweep's trial fits the connected cluster (Ray is up)."""
    from vilocal_dist.distributed.resources import check_trial, cluster_capacity

    cap = cluster_capacity()
    for spec in specs:
        if spec.kind.name == INPAINT_SWEEP:
            r = spec.resources
            check_trial(r.cpus_per_trial, r.gpus_per_trial, cap, flag=f"{spec.name}: resources.gpus_per_trial")
