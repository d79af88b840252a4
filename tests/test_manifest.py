"""Forged-dataset layout: atomic video folders, append-only manifest, idempotence, splits."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from vilocal_dist.data import ForgedDataset, load_video, open_source, package_versions, split_for, write_forged_video


def _video(seed: int = 0, t: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (t, 16, 20, 3), dtype=np.uint8)
    return frames, rng.random((t, 16, 20)) < 0.2


def _record(source_video: str = "bmx", method: str = "iivi", split: str = "train") -> dict:
    return {
        "source_video": source_video,
        "source": f"davis:{source_video}",
        "method": method,
        "split": split,
        "config": {"lr": 1e-3},
        "seed": 3,
    }


def test_layout_record_and_lossless_content(tmp_path: Path) -> None:
    frames, masks = _video()
    record = write_forged_video(tmp_path, _record(), frames, masks)
    assert record["id"] == "bmx__iivi" and record["path"] == "videos/bmx__iivi"
    assert (record["frames"], record["height"], record["width"]) == (3, 16, 20)
    assert record["versions"]["numpy"] == np.__version__ and "created" in record
    folder = tmp_path / "videos" / "bmx__iivi"
    assert sorted(p.name for p in folder.iterdir()) == ["frames", "masks", "provenance.json"]
    assert json.loads((folder / "provenance.json").read_text()) == record
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == record
    got_frames, got_masks = load_video(open_source(folder))
    assert np.array_equal(got_frames, frames) and np.array_equal(got_masks, masks)
    assert [p.name for p in (tmp_path / "videos").iterdir()] == ["bmx__iivi"]  # no temp folders left


def test_idempotent_and_filters(tmp_path: Path) -> None:
    frames, masks = _video()
    first = write_forged_video(tmp_path, _record(), frames, masks)
    again = write_forged_video(tmp_path, _record(), *_video(seed=1))
    assert again == first
    write_forged_video(tmp_path, _record(method="intervi"), frames, masks)
    write_forged_video(tmp_path, _record("cows", "iivi", "test"), frames, masks)
    dataset = ForgedDataset(tmp_path)
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 3
    assert dataset.completed_ids() == {"bmx__iivi", "bmx__intervi", "cows__iivi"}
    assert [r["id"] for r in dataset.records(split="test")] == ["cows__iivi"]
    assert [r["id"] for r in dataset.records(methods=["intervi"])] == ["bmx__intervi"]
    assert dataset.video_dir("cows__iivi") == tmp_path / "videos" / "cows__iivi"
    with pytest.raises(ValueError):
        dataset.records(split="val")


def test_partial_lines_and_leftover_folders(tmp_path: Path) -> None:
    frames, masks = _video()
    write_forged_video(tmp_path, _record(), frames, masks)
    manifest = tmp_path / "manifest.jsonl"
    with manifest.open("a") as handle:
        handle.write('{"id": "half-writ')  # a writer died mid-line
    assert ForgedDataset(tmp_path).completed_ids() == {"bmx__iivi"}
    # A folder whose record never made it (crash between rename and append) is redone.
    stale = tmp_path / "videos" / "cows__iivi"
    stale.mkdir()
    (stale / "junk.txt").write_text("x")
    write_forged_video(tmp_path, _record("cows"), frames, masks)
    assert not (stale / "junk.txt").exists()
    assert ForgedDataset(tmp_path).completed_ids() == {"bmx__iivi", "cows__iivi"}
    lines = manifest.read_text().split("\n")
    assert lines[1] == '{"id": "half-writ' and json.loads(lines[2])["id"] == "cows__iivi"


def test_concurrent_writers(tmp_path: Path) -> None:
    frames, masks = _video()
    with ThreadPoolExecutor(max_workers=6) as pool:  # two writers per id, racing
        futures = [pool.submit(write_forged_video, tmp_path, _record(f"v{i % 3}"), frames, masks) for i in range(6)]
        results = [future.result() for future in futures]  # re-raises any writer's exception
    assert [r["id"] for r in results] == ["v0__iivi", "v1__iivi", "v2__iivi"] * 2
    records = ForgedDataset(tmp_path).records()
    assert sorted(r["id"] for r in records) == ["v0__iivi", "v1__iivi", "v2__iivi"]
    assert all(json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines())
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["v0__iivi", "v1__iivi", "v2__iivi"]


def test_bad_records_rejected(tmp_path: Path) -> None:
    frames, masks = _video()
    with pytest.raises(ValueError, match="lacks"):
        write_forged_video(tmp_path, {"source_video": "x"}, frames, masks)
    with pytest.raises(ValueError, match="split"):
        write_forged_video(tmp_path, _record(split="val"), frames, masks)
    with pytest.raises(ValueError, match="masks"):
        write_forged_video(tmp_path, _record(), frames, masks[:2])
    assert ForgedDataset(tmp_path).records() == []


def test_split_by_source_video() -> None:
    names = [f"video{i}" for i in range(2000)]
    splits = [split_for(name, 0.2, seed=0) for name in names]
    assert splits == [split_for(name, 0.2, seed=0) for name in names]
    assert 0.17 < splits.count("test") / len(names) < 0.23
    assert splits != [split_for(name, 0.2, seed=1) for name in names]
    assert {split_for(n, 0.0) for n in names[:50]} == {"train"} and {split_for(n, 1.0) for n in names[:50]} == {"test"}
    with pytest.raises(ValueError):
        split_for("x", 1.5)


def test_package_versions() -> None:
    versions = package_versions()
    assert versions["numpy"] == np.__version__
    assert set(versions) >= {"vilocal_dist", "torch", "av", "ray", "mlflow"}
