"""Shared fixtures: the DAVIS sequence (skipped with a reason when absent) and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from vilocal_dist.paths import davis_root  # noqa: E402


@pytest.fixture(scope="session")
def davis_dir() -> Path:
    """DAVIS root holding bmx-trees; skips (saying where it looked) when it is absent."""
    root = davis_root()
    if not (root / "JPEGImages" / "480p" / "bmx-trees").is_dir():
        pytest.skip(
            f"DAVIS sequence bmx-trees not found under {root} "
            "(set VILOCAL_DAVIS_ROOT to a DAVIS root holding JPEGImages/480p/bmx-trees)"
        )
    return root


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray cluster for the whole session (4 logical CPUs on 2 cores, dashboard on).

    ``address="local"`` always starts a fresh cluster, never attaching to another head on the
    machine. The dashboard stays on: Ray Train inside Tune needs its State API.
    """
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=4,
        num_gpus=0,
        include_dashboard=True,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        log_to_driver=False,
        runtime_env={"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true"}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture()
def mlflow_home(tmp_path, monkeypatch):
    """An isolated local store: VILOCAL_HOME under tmp_path, no inherited tracking URI."""
    monkeypatch.setenv("VILOCAL_HOME", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("VILOCAL_STORAGE", raising=False)
    return tmp_path / "runs"


@pytest.fixture(scope="module")
def forged(tmp_path_factory) -> Path:
    """A tiny forged dataset: 3 composed videos x 5 frames at 32x48, telea, 2 train / 1 test."""
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.engines.forge import forge_local

    root = tmp_path_factory.mktemp("forged")
    videos = [compose_video(seed, 5, (32, 48)) for seed in range(3)]
    forge_local(root, videos, ["telea"], splits={v.name: s for v, s in zip(videos, ["train", "train", "test"])},
                progress=False)
    return root
