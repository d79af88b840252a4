"""`vilocal data import`: each supported layout, broken datasets, storage modes, and a round trip
through training and evaluation on the imported data (train on two methods, test on the third)."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vilocal_dist.cli.main import main
from vilocal_dist.data.clips import ClipDataset
from vilocal_dist.data.composed import compose_video
from vilocal_dist.data.importer import ImportProblems, import_dataset
from vilocal_dist.data.manifest import REQUIRED_FIELDS, ForgedDataset
from vilocal_dist.engines.forge import forge_local
from vilocal_dist.errors import InputError
from vilocal_dist.video.io import write_video

SIZE = (32, 48)
METHODS = ("telea", "ns", "flowprop")


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    """Three composed videos × 4 frames × 32x48 forged with three methods (the data to lay out)."""
    root = tmp_path_factory.mktemp("forged")
    videos = [compose_video(seed, 4, SIZE) for seed in range(3)]
    forge_local(root, videos, list(METHODS), splits={videos[0].name: "train", videos[1].name: "train",
                                                      videos[2].name: "test"}, progress=False)
    return root


def _videos(forged):
    dataset = ForgedDataset(forged)
    return [(r["source_video"], r["method"], dataset.video_dir(r["id"])) for r in dataset.records()]


def write_tree(forged, root, masks="shared"):
    """ROOT/<method>/<source>/ frames; masks shared (ROOT/masks/<source>), per method
    (ROOT/<method>/masks/<source>) or beside (ROOT/<method>/<source>_masks)."""
    for source, method, folder in _videos(forged):
        shutil.copytree(folder / "frames", root / method / source)
        target = {"shared": root / "masks" / source, "per_method": root / method / "masks" / source,
                  "beside": root / method / f"{source}_masks"}[masks]
        if not target.exists():
            shutil.copytree(folder / "masks", target)
    return root


def write_davis_per_method(forged, root):
    """ROOT/<method>/JPEGImages/480p/<source> + ROOT/<method>/Annotations/480p/<source>."""
    for source, method, folder in _videos(forged):
        shutil.copytree(folder / "frames", root / method / "JPEGImages" / "480p" / source)
        shutil.copytree(folder / "masks", root / method / "Annotations" / "480p" / source)
    return root


def write_video_files(forged, root):
    """ROOT/<method>/<source>.mkv (lossless FFV1) with the mask folder ROOT/<method>/<source>_masks."""
    for source, method, folder in _videos(forged):
        frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((folder / "frames").iterdir())]
        write_video(root / method / f"{source}.mkv", frames, codec="ffv1")
        shutil.copytree(folder / "masks", root / method / f"{source}_masks")
    return root


def write_list(forged, root, fmt):
    """Frame and mask folders anywhere, listed in a CSV / JSON file with an explicit split."""
    rows = []
    for source, method, folder in _videos(forged):
        shutil.copytree(folder / "frames", root / "clips" / f"{method}-{source}")
        shutil.copytree(folder / "masks", root / "gt" / f"{method}-{source}")
        rows.append({"video": f"clips/{method}-{source}", "mask": f"gt/{method}-{source}", "method": method,
                     "source": source, "split": "test" if source == "composed-2" else "train"})
    path = root / f"list.{fmt}"
    if fmt == "csv":
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text(json.dumps(rows))
    return path


def _assert_same_as_forged(forged, out, exact=True):
    """Same ids, methods and frames/masks (via the manifest API) as the forged dataset."""
    want, got = ForgedDataset(forged).records(), ForgedDataset(out).records()
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in want)
    for record in got:
        assert set(REQUIRED_FIELDS) <= set(record) and (record["frames"], record["height"], record["width"]) == (4, *SIZE)
    splits = {}
    for record in got:  # every method's video of one source shares a split
        assert splits.setdefault(record["source_video"], record["split"]) == record["split"]
    a = ClipDataset.from_manifest(forged, size=SIZE, compress_fraction=0.0)
    b = ClipDataset.from_manifest(out, size=SIZE, compress_fraction=0.0)
    order = {v.name: i for i, v in enumerate(b.videos)}
    for i, video in enumerate(a.videos):
        frames_a, masks_a = a.load(i)
        frames_b, masks_b = b.load(order[video.name])
        assert np.array_equal(masks_a, masks_b)
        assert np.array_equal(frames_a, frames_b) if exact else np.abs(frames_a.astype(int) - frames_b).max() <= 2


@pytest.mark.parametrize("masks", ["shared", "per_method", "beside"])
def test_tree_layouts_import_by_hard_link(forged, tmp_path, masks):
    root = write_tree(forged, tmp_path / "src", masks)
    summary = import_dataset(root, tmp_path / "out", test_fraction=0.4)
    assert summary["videos"] == 9 and summary["methods"] == {m: 3 for m in sorted(METHODS)}
    assert summary["storage"] == {"link": 9}
    _assert_same_as_forged(forged, tmp_path / "out")
    record = ForgedDataset(tmp_path / "out").records(methods=["ns"])[0]
    linked = tmp_path / "out" / record["frames_path"] / "00000.png"
    assert os.path.samefile(linked, root / "ns" / record["source_video"] / "00000.png")


def test_davis_root_per_method_and_shared_masks_flag(forged, tmp_path):
    root = write_davis_per_method(forged, tmp_path / "davis")
    import_dataset(root, tmp_path / "out")
    _assert_same_as_forged(forged, tmp_path / "out")
    # --masks: a shared mask root elsewhere (e.g. the original DAVIS Annotations/480p)
    plain = write_tree(forged, tmp_path / "plain", "shared")
    shutil.move(plain / "masks", tmp_path / "annotations_480p")
    import_dataset(plain, tmp_path / "out2", masks=tmp_path / "annotations_480p", methods=["telea", "ns"])
    assert {r["method"] for r in ForgedDataset(tmp_path / "out2").records()} == {"telea", "ns"}


def test_video_files_with_mask_folders(forged, tmp_path):
    root = write_video_files(forged, tmp_path / "vids")
    summary = import_dataset(root, tmp_path / "out")
    assert summary["videos"] == 9
    record = ForgedDataset(tmp_path / "out").records()[0]
    assert record["frames_path"].endswith("/video.mkv") and record["masks_path"].endswith("/masks")
    _assert_same_as_forged(forged, tmp_path / "out", exact=False)  # FFV1 in RGB stores ±1 rounding


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_list_file_with_explicit_splits(forged, tmp_path, fmt):
    path = write_list(forged, tmp_path, fmt)
    import_dataset(path, tmp_path / "out")
    got = ForgedDataset(tmp_path / "out")
    assert {r["source_video"] for r in got.records(split="test")} == {"composed-2"}
    assert len(got.records(split="train", methods=["ns", "telea"])) == 4
    _assert_same_as_forged(forged, tmp_path / "out")


def test_broken_dataset_reports_every_problem_and_writes_nothing(forged, tmp_path, capsys):
    root = write_tree(forged, tmp_path / "bad", "per_method")
    shutil.rmtree(root / "telea" / "masks" / "composed-0")                       # missing masks
    (root / "ns" / "masks" / "composed-1" / "00003.png").unlink()                # 3 masks for 4 frames
    Image.fromarray(np.zeros((16, 48), np.uint8)).save(root / "ns" / "masks" / "composed-2" / "00001.png")
    Image.fromarray(np.full(SIZE, 255, np.uint8)).save(root / "flowprop" / "masks" / "composed-0" / "00002.png")
    for mask in (root / "flowprop" / "masks" / "composed-1").iterdir():          # every mask empty
        Image.fromarray(np.zeros(SIZE, np.uint8)).save(mask)
    (root / "telea" / "composed-2" / "00001.png").write_bytes(b"not a png")      # unreadable frame
    with pytest.raises(ImportProblems) as info:
        import_dataset(root, tmp_path / "out")
    report = "\n".join(info.value.problems)
    assert len(info.value.problems) == 6, report
    assert "[telea/composed-0]" in report and "no masks found" in report
    assert "[ns/composed-1]" in report and "3 masks for 4 frames (none for 00003)" in report
    assert "[ns/composed-2]" in report and "00001.png is 48x16" in report
    assert "[flowprop/composed-0]" in report and "covers the whole frame" in report and "00002.png" in report
    assert "[flowprop/composed-1]" in report and "every mask is empty" in report
    assert "[telea/composed-2]" in report and "00001.png" in report and "unreadable" in report
    assert not (tmp_path / "out").exists()

    assert main(["data", "import", str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "6 problem(s) in 9 video(s)" in err and err.count("\n  [") == 6
    assert not (tmp_path / "out").exists()


def test_list_problems_and_duplicates(forged, tmp_path):
    path = write_list(forged, tmp_path, "json")
    rows = json.loads(path.read_text())
    rows.append(dict(rows[0]))                                   # duplicate (source, method)
    rows.append({"video": "clips/nowhere", "mask": "gt/nowhere", "method": "x"})
    rows.append({"video": rows[1]["video"], "method": "y"})      # no mask column
    rows.append({**rows[2], "split": "val"})
    path.write_text(json.dumps(rows))
    with pytest.raises(ImportProblems) as info:
        import_dataset(path, tmp_path / "out")
    report = "\n".join(info.value.problems)
    assert "2 entries for one (source, method)" in report
    assert "nowhere: no such file or folder" in report
    assert "list.json item 11: no mask" in report
    assert "split must be one of" in report


def test_copy_reference_and_link_fallback(forged, tmp_path, monkeypatch):
    root = write_tree(forged, tmp_path / "src")
    import_dataset(root, tmp_path / "copied", mode="copy")
    record = ForgedDataset(tmp_path / "copied").records()[0]
    copied = tmp_path / "copied" / record["frames_path"] / "00000.png"
    assert record["storage"] == "copy" and os.stat(copied).st_nlink == 1

    def no_link(src, dst):  # a filesystem pair that cannot hard-link (e.g. two mounts)
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    summary = import_dataset(root, tmp_path / "referenced")
    assert summary["storage"] == {"reference": 9}
    records = ForgedDataset(tmp_path / "referenced").records()
    assert all(os.path.isabs(r["frames_path"]) and r["frames_path"].startswith(str(root.resolve())) for r in records)
    assert not any((tmp_path / "referenced" / r["path"] / "frames").exists() for r in records)
    _assert_same_as_forged(forged, tmp_path / "referenced")


def test_existing_dataset_is_not_overwritten_and_leftovers_are_replaced(forged, tmp_path):
    root = write_tree(forged, tmp_path / "src")
    with pytest.raises(InputError, match="already holds a dataset"):
        import_dataset(root, forged)
    stale = tmp_path / "out" / "videos" / "composed-0__ns"  # an import that died before its manifest
    stale.mkdir(parents=True)
    (stale / "junk").write_text("x")
    assert ForgedDataset(tmp_path / "out").records() == []  # no manifest: not a dataset
    import_dataset(root, tmp_path / "out")
    assert not (stale / "junk").exists() and len(ForgedDataset(tmp_path / "out").records()) == 9


def test_cli_import_then_train_two_methods_and_evaluate_the_third(forged, tmp_path, capsys, mlflow_home):
    """The generalization protocol on imported data: train on telea+ns, score all three methods."""
    from vilocal_dist.engines.checkpoint import save_checkpoint
    from vilocal_dist.engines.config import TrainConfig
    from vilocal_dist.engines.datasets import training_datasets
    from vilocal_dist.engines.evaluate import evaluate_checkpoint
    from vilocal_dist.engines.loop import Runtime
    from vilocal_dist.engines.stage1 import train_stage1
    from vilocal_dist.engines.stage2 import train_stage2
    from vilocal_dist.experiments.generalization import format_table, method_rows
    from vilocal_dist.experiments.common import compact_scores
    from vilocal_dist.models import create_model

    path = write_list(forged, tmp_path, "csv")
    out = tmp_path / "imported"
    assert main(["data", "import", str(path), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 6, "test": 3}
    # The import is the dataset's producing run: runs that use it link back to it.
    import mlflow

    from vilocal_dist.tracking.lineage import manifest_sha256, producer_run
    from vilocal_dist.tracking.setup import tracking_uri

    producer = mlflow.MlflowClient(tracking_uri=tracking_uri()).get_run(producer_run(out))
    assert producer.data.tags["vilocal.kind"] == "import" and producer.data.metrics["import/videos"] == 9
    assert producer.info.status == "FINISHED"
    assert [(d.dataset.digest, [t.value for t in d.tags]) for d in producer.inputs.dataset_inputs] == [
        (manifest_sha256(out)[:32], ["forge-output"])]

    cfg = TrainConfig(model="vilocal_tiny", size_h=SIZE[0], size_w=SIZE[1], compress_fraction=0.0, batch_size=2,
                      stage1_epochs=1, stage2_epochs=1, max_train_clips=4, max_val_clips=2)
    train_ds, val_ds, info = training_datasets(out, cfg, methods=["telea", "ns"])
    assert info["methods"] == ["ns", "telea"] and all("flowprop" not in v for v in info["train_videos"])
    torch.manual_seed(0)
    s1 = train_stage1(cfg, train_ds, val_ds, model=create_model("vilocal_tiny"), runtime=Runtime(progress=False))
    s2 = train_stage2(cfg, train_ds, val_ds, model=s1.model, runtime=Runtime(progress=False))
    checkpoint = save_checkpoint(s2.last_checkpoint, tmp_path / "ckpt")

    scores = evaluate_checkpoint(checkpoint, out, split="test", progress=False)
    assert set(scores["by_method"]) == set(METHODS) and scores["frames"] == 12
    table = format_table(method_rows("telea+ns", list(METHODS), ["telea", "ns"], compact_scores(scores)), list(METHODS))
    assert "| telea+ns |" in table and table.count(" *") == 2  # telea and ns seen, flowprop unseen


def test_experiments_take_an_imported_dataset_with_published_method_names(forged, tmp_path):
    """data.dataset: the protocols use an existing dataset as is, whatever its methods are called."""
    from vilocal_dist.errors import ConfigError
    from vilocal_dist.experiments.common import forge_dataset
    from vilocal_dist.experiments.registry import resolve_config

    path = write_list(forged, tmp_path, "json")
    names = {"telea": "vi", "ns": "op", "flowprop": "cp"}  # the ViLocal authors' names for their inpainters
    rows = [{**row, "method": names[row["method"]]} for row in json.loads(path.read_text())]
    path.write_text(json.dumps(rows))
    import_dataset(path, tmp_path / "out")
    overrides = {"data.dataset": str(tmp_path / "out"), "methods": ["vi", "op", "cp"], "train_on": [["vi", "op"]]}
    spec, _ = resolve_config("generalization", tiny=True, overrides=overrides)
    assert spec.train_on == (("vi", "op"),)
    assert forge_dataset(spec.setup.data, spec.setup.methods, {}, tmp_path / "work") == (tmp_path / "out").resolve()
    assert not (tmp_path / "work").exists()  # nothing forged
    spec, _ = resolve_config("generalization", tiny=True, overrides={**overrides, "methods": ["vi", "op", "sttn"]})
    with pytest.raises(ConfigError, match=r"no videos of sttn \(train\), sttn \(test\)"):
        forge_dataset(spec.setup.data, spec.setup.methods, {}, tmp_path / "work")
    with pytest.raises(ConfigError):  # without data.dataset, methods must be ones this package can run
        resolve_config("generalization", tiny=True, overrides={"methods": ["vi", "op", "cp"]})
