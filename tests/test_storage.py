"""The storage root: local atomic writes, and a forged dataset on a real S3-protocol server
(moto's standalone server on loopback): store then publish, marker last, node-local cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from s3server import S3Server, restore_env, use_env
from vilocal_dist import storage
from vilocal_dist.data import ForgedDataset, load_video, open_source, publish, store_video, write_forged_video


def _video(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (3, 16, 20, 3), dtype=np.uint8), rng.random((3, 16, 20)) < 0.2


def _record(name: str = "v0", split: str = "train") -> dict:
    return {"source_video": name, "source": "test", "method": "telea", "split": split, "config": {}, "seed": 0}


@pytest.fixture(scope="module")
def s3():
    server = S3Server()
    previous = use_env(server.env)
    try:
        server.create_bucket("bkt")
        yield server
    finally:
        restore_env(previous)
        server.close()


@pytest.fixture()
def scratch(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VILOCAL_SCRATCH", str(tmp_path / "scratch"))
    return tmp_path / "scratch"


def test_roots_normalize_and_join(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("data/x/") == str(tmp_path / "data" / "x")
    assert storage.normalize(f"file://{tmp_path}/y") == str(tmp_path / "y")
    assert storage.normalize("s3://bkt/forged/") == "s3://bkt/forged"
    assert storage.join("s3://bkt/forged", "videos", "a/") == "s3://bkt/forged/videos/a"
    assert storage.is_remote("gs://b/p") and not storage.is_remote("/data") and not storage.is_remote("file:///d")


def test_local_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "sub" / "a.json"
    storage.write_text(target, "first\n")
    storage.write_text(target, "second\n")
    assert target.read_text() == "second\n" and os.listdir(target.parent) == ["a.json"]
    assert storage.read_text(target) == "second\n" and storage.exists(target) and not storage.exists(tmp_path / "b")


def test_s3_write_read_list_upload_marker_last(s3, tmp_path) -> None:
    folder = tmp_path / "up"
    (folder / "frames").mkdir(parents=True)
    for i in range(3):
        (folder / "frames" / f"{i:05d}.png").write_bytes(bytes([i]) * 10)
    (folder / "done.json").write_text("{}")
    order = storage.upload_folder(folder, "s3://bkt/up", last=("done.json",))
    assert order[-1] == "done.json" and len(order) == 4
    assert [e.rel for e in storage.list_files("s3://bkt/up")] == [
        "done.json", "frames/00000.png", "frames/00001.png", "frames/00002.png"]
    assert storage.read_bytes("s3://bkt/up/frames/00002.png") == b"\x02" * 10
    assert storage.list_files("s3://bkt/nothing-here") == []


def test_s3_cache_refreshes_by_size_and_mtime(s3, scratch) -> None:
    storage.write_text("s3://bkt/c/a.txt", "one")
    local = storage.local_copy("s3://bkt/c")
    assert local.is_relative_to(scratch / "cache") and (local / "a.txt").read_text() == "one"
    stamp = (local / "a.txt").stat().st_mtime_ns
    assert storage.local_copy("s3://bkt/c") == local and (local / "a.txt").stat().st_mtime_ns == stamp  # a hit
    storage.write_text("s3://bkt/c/a.txt", "three")  # new size: refetched
    assert (storage.local_copy("s3://bkt/c") / "a.txt").read_text() == "three"
    assert storage.local_copy("s3://bkt/c/a.txt").read_text() == "three"  # a single file
    with pytest.raises(FileNotFoundError):
        storage.local_copy("s3://bkt/absent")


def test_forged_dataset_on_s3_store_then_publish(s3, scratch) -> None:
    root = "s3://bkt/forged"
    frames, masks = _video()
    stored = store_video(root, _record(), frames, masks)
    assert ForgedDataset(root).records() == []  # stored, not yet listed
    assert storage.exists(f"{root}/videos/v0__telea/provenance.json")
    again = store_video(root, _record(), *_video(seed=3))  # a retry finds the complete video
    assert again == stored
    assert publish(root, [stored]) == [stored] and publish(root, [stored]) == [stored]  # idempotent
    other = write_forged_video(root, _record("v1", "test"), frames, masks)
    dataset = ForgedDataset(root)
    assert [r["id"] for r in dataset.records()] == ["v0__telea", "v1__telea"]
    assert [r["id"] for r in dataset.records(split="test")] == [other["id"]]
    assert dataset.video_dir("v1__telea") == f"{root}/videos/v1__telea"
    local = dataset.local_copy()
    got_frames, got_masks = load_video(open_source(local / "videos" / "v0__telea"))
    assert np.array_equal(got_frames, frames) and np.array_equal(got_masks, masks)
    assert json.loads((local / "videos" / "v0__telea" / "provenance.json").read_text()) == stored
    assert not (scratch / "forge").exists() or os.listdir(scratch / "forge") == []  # upload temp folders gone


def test_publish_refuses_a_record_whose_objects_are_incomplete(s3, scratch) -> None:
    root = "s3://bkt/half"
    frames, masks = _video()
    record = store_video(root, _record(), frames, masks)
    storage.resolve(f"{root}/videos/v0__telea/provenance.json")[0].delete_file("bkt/half/videos/v0__telea/provenance.json")
    with pytest.raises(ValueError, match="not completely stored"):
        publish(root, [record])
    assert ForgedDataset(root).records() == []


def test_imported_records_on_s3_are_cached_by_their_paths(s3, scratch, tmp_path) -> None:
    root = "s3://bkt/imported"
    local = tmp_path / "imp"
    for sub in ("frames/a", "masks/a"):
        (local / sub).mkdir(parents=True)
        (local / sub / "00000.png").write_bytes(b"png")
    record = {**_record("a"), "id": "a__telea", "frames_path": "frames/a", "masks_path": "masks/a"}
    (local / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    storage.upload_folder(local, root, last=("manifest.jsonl",))
    dataset = ForgedDataset(root)
    assert dataset.video_paths(record) == (f"{root}/frames/a", f"{root}/masks/a")
    copy = ForgedDataset(dataset.local_copy())
    frames, masks = copy.video_paths(copy.records()[0])
    assert (Path(frames) / "00000.png").is_file() and (Path(masks) / "00000.png").is_file()


def test_publish_takes_imported_records_whose_files_exist(tmp_path) -> None:
    (tmp_path / "frames" / "a").mkdir(parents=True)
    record = {**_record("a"), "id": "a__telea", "frames_path": "frames/a", "masks_path": "masks/a"}
    with pytest.raises(ValueError, match="not completely stored"):
        publish(tmp_path, [record])  # no masks yet
    (tmp_path / "masks" / "a").mkdir(parents=True)
    assert publish(tmp_path, [record]) == [record] and ForgedDataset(tmp_path).records() == [record]
