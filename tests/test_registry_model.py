"""The registered detector round trip against a real SQLite store: log and register a stage-2
model, then `vilocal detect --model models:/vilocal-detector/1` (and `@alias`) gives the same
masks as the checkpoint path; `vilocal evaluate --model models:/…` records its metrics on the
version; only the weights file is read back (weights_only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vilocal_dist.cli.main import main
from vilocal_dist.engines.checkpoint import checkpoint_dict, save_checkpoint
from vilocal_dist.models import create_model
from vilocal_dist.tracking.model_registry import REGISTERED_MODEL, log_detector, model_version, resolve_model

TRAIN_CONFIG = {"size_h": 32, "size_w": 48, "model": "vilocal_tiny", "tau": 0.1, "alpha": 0.75, "gamma": 2.0}


def _masks(folder: Path) -> list[np.ndarray]:
    import cv2

    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted((folder / "masks").glob("*.png"))]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A stage-2 vilocal_tiny checkpoint file and its registered version, in a fresh store that
    this module's tests share (logging a model takes seconds: once is enough)."""
    import mlflow

    from vilocal_dist.tracking.setup import ensure_experiment, tracking_uri

    tmp = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VILOCAL_HOME", str(tmp / "runs"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        model = create_model("vilocal_tiny")
        ckpt = checkpoint_dict(model, model_name="vilocal_tiny", stage=2, epoch=0, samples_seen=4,
                               train_config=TRAIN_CONFIG, metrics={"val/f1": 0.25})
        path = save_checkpoint(ckpt, tmp / "ckpt")
        client = mlflow.MlflowClient(tracking_uri=tracking_uri())
        run_id = client.create_run(ensure_experiment("vilocal-train")).info.run_id
        version = log_detector(run_id, model, path, train_config=TRAIN_CONFIG, methods="telea,ns",
                               metrics={"best/val/f1": 0.25})
        yield path, version, run_id


@pytest.fixture(autouse=True)
def _store(registered, monkeypatch):
    """Every test reads the module's store."""
    monkeypatch.setenv("VILOCAL_HOME", str(Path(registered[0]).parent.parent / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_register_then_detect_from_the_registry_gives_the_checkpoints_masks(registered, tmp_path, capsys):
    import mlflow

    from vilocal_dist.tracking.setup import tracking_uri

    path, version, run_id = registered
    assert version == "1"
    mv = model_version(f"models:/{REGISTERED_MODEL}/1")
    assert mv.run_id == run_id
    assert mv.tags["train.tau"] == "0.1" and mv.tags["train.alpha"] == "0.75" and mv.tags["train.gamma"] == "2.0"
    assert mv.tags["train.model"] == "vilocal_tiny" and mv.tags["vilocal.methods"] == "telea,ns"
    assert mv.tags["best/val/f1"] == "0.25"
    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    client.set_registered_model_alias(REGISTERED_MODEL, "champion", "1")

    video = "composed:3:6:32x48"
    assert main(["detect", video, "--model", str(path), "--out", str(tmp_path / "from-path")]) == 0
    assert main(["detect", video, "--model", f"models:/{REGISTERED_MODEL}/1", "--out", str(tmp_path / "from-store")]) == 0
    assert main(["detect", video, "--model", f"models:/{REGISTERED_MODEL}@champion", "--out", str(tmp_path / "alias")]) == 0
    expected = _masks(tmp_path / "from-path")
    assert len(expected) == 6
    for other in ("from-store", "alias"):
        got = _masks(tmp_path / other)
        assert len(got) == 6 and all(np.array_equal(a, b) for a, b in zip(expected, got))


def test_only_the_weights_file_comes_back_and_it_is_the_checkpoint(registered):
    path, _, _ = registered
    local = resolve_model(f"models:/{REGISTERED_MODEL}/1")
    assert local.name == "model.pt" and local.read_bytes() == Path(path).read_bytes()
    assert sorted(p.name for p in local.parent.iterdir()) == ["model.pt"]


@pytest.mark.parametrize("ref, problem", [
    (f"models:/{REGISTERED_MODEL}/7", "not in the model registry"),
    (f"models:/{REGISTERED_MODEL}@nobody", "not in the model registry"),
    ("models:/vilocal-detector", "write models:/NAME/VERSION or models:/NAME@ALIAS"),
])
def test_a_bad_registry_reference_is_one_line_exit_2(registered, tmp_path, capsys, ref, problem):
    code = main(["detect", "composed:3:6:32x48", "--model", ref, "--out", str(tmp_path / "x")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and problem in lines[0] and ref in lines[0], lines


def test_evaluate_from_the_registry_records_scores_on_the_version(registered, tmp_path, capsys):
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.engines.forge import forge_local
    from vilocal_dist.tracking.lineage import manifest_sha256

    videos = [compose_video(seed, 5, (32, 48)) for seed in range(2)]
    forge_local(tmp_path / "forged", videos, ["telea"], splits={v.name: "test" for v in videos}, progress=False)
    assert main(["evaluate", "--model", f"models:/{REGISTERED_MODEL}/1", "--data", str(tmp_path / "forged"),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == f"models:/{REGISTERED_MODEL}/1"
    tags = model_version(f"models:/{REGISTERED_MODEL}/1").tags
    assert float(tags["test/f1"]) == pytest.approx(result["pooled"]["f1"], rel=1e-5)
    assert float(tags["test/telea/iou"]) == pytest.approx(result["by_method"]["telea"]["pooled"]["iou"], rel=1e-5)

    import mlflow

    from vilocal_dist.tracking.setup import tracking_uri

    run = mlflow.MlflowClient(tracking_uri=tracking_uri()).get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["test/f1"] == pytest.approx(result["pooled"]["f1"])
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == manifest_sha256(tmp_path / "forged")[:32]
    assert [t.value for t in dataset.tags] == ["evaluation"]
