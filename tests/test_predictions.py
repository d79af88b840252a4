"""`vilocal evaluate --predictions`: scoring another detector's saved masks / probability maps."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from vilocal_dist.cli.main import main
from vilocal_dist.data.composed import compose_video
from vilocal_dist.data.importer import import_dataset
from vilocal_dist.data.manifest import ForgedDataset
from vilocal_dist.engines.forge import forge_local
from vilocal_dist.engines.predictions import PredictionProblems, score_predictions
from vilocal_dist.errors import InputError

SIZE = (32, 48)


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    """Three composed videos × 4 frames forged with telea and ns; composed-2 is the test source."""
    root = tmp_path_factory.mktemp("forged")
    videos = [compose_video(seed, 4, SIZE) for seed in range(3)]
    forge_local(root, videos, ["telea", "ns"], splits={videos[0].name: "train", videos[1].name: "train",
                                                        videos[2].name: "test"}, progress=False)
    return root


def _masks(forged, record):
    folder = ForgedDataset(forged).video_dir(record["id"]) / "masks"
    return [np.asarray(Image.open(p)) > 0 for p in sorted(folder.iterdir())]


def write_predictions(forged, out, make, split="test", ext=".png"):
    """OUT/<video id>/<frame>.png|.npy from make(gt mask bool H×W) -> uint8 image or float map."""
    for record in ForgedDataset(forged).records(split=split):
        folder = out / record["id"]
        folder.mkdir(parents=True)
        for t, gt in enumerate(_masks(forged, record)):
            pred = make(gt)
            if ext == ".npy":
                np.save(folder / f"{t:05d}.npy", pred)
            else:
                Image.fromarray(pred).save(folder / f"{t:05d}.png")
    return out


def test_ground_truth_as_predictions_scores_one_and_zeros_match_the_baseline(forged, tmp_path):
    perfect = write_predictions(forged, tmp_path / "gt", lambda gt: gt.astype(np.uint8) * 255)
    scores = score_predictions(perfect, forged, detector="oracle", progress=False)
    assert scores["pooled"]["f1"] == 1.0 and scores["pooled"]["iou"] == 1.0
    assert scores["frames"] == 8 and set(scores["by_method"]) == {"telea", "ns"} and scores["model_name"] == "oracle"

    zeros = write_predictions(forged, tmp_path / "zeros", lambda gt: np.zeros(gt.shape, np.float32), ext=".npy")
    scores = score_predictions(zeros, forged, progress=False)
    assert scores["empty_gt_frames"] == 0 and scores["pooled"]["f1"] == 0.0
    assert scores["pooled"] == scores["baselines"]["all_zeros"]["pooled"]

    # A probability map just above / below the threshold inside the mask.
    soft = write_predictions(forged, tmp_path / "soft", lambda gt: gt * np.float32(0.6), ext=".npy")
    assert score_predictions(soft, forged, threshold=0.5, progress=False)["pooled"]["f1"] == 1.0
    assert score_predictions(soft, forged, threshold=0.7, progress=False)["pooled"]["f1"] == 0.0


def test_half_the_mask_predicted_scores_two_thirds(forged, tmp_path):
    def half(gt):
        pred = gt.copy()
        ys, xs = np.nonzero(gt)
        pred[ys[: len(ys) // 2], xs[: len(xs) // 2]] = False  # drop half of the true pixels
        return pred

    preds = write_predictions(forged, tmp_path / "half", half, ext=".npy")
    scores = score_predictions(preds, forged, methods=["ns"], progress=False)
    gts = [g for r in ForgedDataset(forged).records(split="test", methods=["ns"]) for g in _masks(forged, r)]
    expected = np.mean([2 * (g.sum() - g.sum() // 2) / (2 * (g.sum() - g.sum() // 2) + g.sum() // 2) for g in gts])
    assert scores["pooled"]["f1"] == pytest.approx(expected) and set(scores["by_method"]) == {"ns"}


def test_missing_and_mismatched_files_are_listed_together(forged, tmp_path, capsys):
    preds = write_predictions(forged, tmp_path / "p", lambda gt: gt.astype(np.uint8) * 255)
    shutil.rmtree(preds / "composed-2__telea")                                   # a missing video
    (preds / "composed-2__ns" / "00003.png").unlink()                           # a missing frame
    with pytest.raises(PredictionProblems) as info:
        score_predictions(preds, forged, progress=False)
    report = "\n".join(info.value.problems)
    assert len(info.value.problems) == 2
    assert "no predictions for video composed-2__telea" in report and "3 prediction files for 4 frames" in report

    small = write_predictions(forged, tmp_path / "small", lambda gt: np.zeros((16, 24), np.uint8))
    code = main(["evaluate", "--predictions", str(small), "--data", str(forged)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("predictions differ from the video's 48x32") == 2 and "--size" in err
    # at one size, the ground truth is resized too: all-zero predictions score 0
    assert score_predictions(small, forged, size=(16, 24), progress=False)["pooled"]["f1"] == 0.0

    with pytest.raises(InputError, match="no such predictions folder"):
        score_predictions(tmp_path / "nowhere", forged, progress=False)
    bad = write_predictions(forged, tmp_path / "bad", lambda gt: gt * np.float32(2.0), ext=".npy")
    with pytest.raises(InputError, match=r"within \[0, 1\]"):
        score_predictions(bad, forged, progress=False)


def test_cli_scores_predictions_on_an_imported_dataset_and_logs_the_detector(forged, tmp_path, mlflow_home, capsys):
    import mlflow

    # The imported copy of the forged set (hard links): same ids, so the same predictions apply.
    tree = tmp_path / "tree"
    for record in ForgedDataset(forged).records():
        folder = ForgedDataset(forged).video_dir(record["id"])
        shutil.copytree(folder / "frames", tree / record["method"] / record["source_video"])
        shutil.copytree(folder / "masks", tree / record["method"] / "masks" / record["source_video"], dirs_exist_ok=True)
    import_dataset(tree, tmp_path / "imported", test_fraction=1.0)
    preds = write_predictions(forged, tmp_path / "p", lambda gt: gt.astype(np.uint8) * 255, split=None)

    argv = ["evaluate", "--predictions", str(preds), "--data", str(tmp_path / "imported"), "--detector-name",
            "other-net", "--experiment", "detectors"]
    assert main(argv + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pooled"]["f1"] == 1.0 and result["model_name"] == "other-net" and result["frames"] == 24

    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "evaluate: other-net on" in table and "(all_zeros)" in table and "telea" in table

    runs = mlflow.search_runs(experiment_names=["detectors"], output_format="list")
    assert len(runs) == 2 and {r.data.tags["vilocal.detector"] for r in runs} == {"other-net"}
    assert runs[0].data.metrics["test/f1"] == 1.0 and runs[0].data.tags["vilocal.detector_kind"] == "predictions"
    assert main(["evaluate", "--model", "x", "--detector-name", "y", "--data", str(forged)]) == 2
