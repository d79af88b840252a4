"""`vilocal inpaint` end to end on a tiny video: mask folder, single-frame mask, errors."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vilocal_dist.cli.main import main
from vilocal_dist.video.io import list_image_files, read_frames, write_png_folder

T, H, W = 5, 32, 48


@pytest.fixture(autouse=True)
def one_thread():
    # The intervi run uses tiny convolutions: on a busy 2-core box thread hand-offs dominate.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_video(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A panning texture as a PNG folder plus a mask folder: (frames dir, masks dir, frames, masks)."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (H // 4, (W + 2 * T) // 4, 3)).astype(np.uint8)
    texture = cv2.resize(coarse, (W + 2 * T, H), interpolation=cv2.INTER_CUBIC)
    frames = np.stack([texture[:, 2 * (T - i) : 2 * (T - i) + W] for i in range(T)])
    masks = np.zeros((T, H, W), bool)
    masks[:, 10:20, 16:28] = True
    frames[masks] = (255, 0, 255)
    return write_png_folder(tmp_path / "video", frames), write_png_folder(tmp_path / "masks", masks), frames, masks


def read_masks(folder: Path) -> np.ndarray:
    return np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 127 for p in list_image_files(folder)])


def test_mask_folder(tiny_video, tmp_path: Path) -> None:
    video, mask_dir, frames, masks = tiny_video
    out = tmp_path / "out"
    rc = main(["inpaint", str(video), "--mask", str(mask_dir), "--out", str(out), "--method", "flowprop", "--quiet"])
    assert rc == 0
    result = read_frames(out / "frames")
    assert result.shape == frames.shape
    np.testing.assert_array_equal(result[~masks], frames[~masks])  # lossless PNG, known pixels untouched
    assert np.all(np.any(result[masks] != (255, 0, 255), axis=-1))
    np.testing.assert_array_equal(read_masks(out / "masks"), masks)
    assert (out / "result.mp4").stat().st_size > 0
    record = json.loads((out / "result.json").read_text())
    assert record["method"] == "flowprop" and record["config"]["dis_preset"] == "medium"
    assert record["input"]["mask_kind"] == "sequence" and record["input"]["frames"] == T
    assert record["input"]["hash"].startswith("sha256:") and "runtime/seconds" in record["metrics"]


def test_size_max_frames_overrides_and_workdir(tiny_video, tmp_path: Path) -> None:
    video, mask_dir, _, _ = tiny_video
    out = tmp_path / "out"
    argv = ["inpaint", str(video), "--mask", str(mask_dir), "--out", str(out), "--method", "intervi", "--quiet",
            "--size", "25x40", "--max-frames", "3", "--set", "preset=tiny", "--set", "iterations=2",
            "--set", "updates_per_batch=1", "--set", "offsets=1"]  # fmt: skip
    assert main(argv) == 0
    assert read_frames(out / "frames").shape == (3, 25, 40, 3)
    assert (out / "result.mkv").is_file() and not (out / "result.mp4").exists()  # odd height: lossless preview
    record = json.loads((out / "result.json").read_text())
    assert record["config"]["iterations"] == 2 and record["config"]["offsets"] == "1"
    assert record["overrides"] == {"preset": "tiny", "iterations": 2, "updates_per_batch": 1, "offsets": 1}
    assert (out / ".work" / "intervi-checkpoint.pt").is_file()


def _fake_propagation(monkeypatch: pytest.MonkeyPatch, calls: list) -> None:
    """Stand-in for vilocal_dist.inpaint.propagation: repeats the given mask on every frame."""

    def propagate_mask(frames, mask, frame_index, cfg=None, *, seed=0, progress=True):
        calls.append((frames.shape, mask.shape, frame_index))
        summary = {"iters": 0, "stop": "fake", "adapt_iters": 0, "confidence": [1.0] * len(frames),
                   "mean_confidence": 1.0, "flag_reasons": {}}  # fmt: skip
        return types.SimpleNamespace(masks=np.repeat(mask[None], len(frames), axis=0), summary=lambda: summary)

    fake = types.ModuleType("vilocal_dist.inpaint.propagation")
    fake.propagate_mask = propagate_mask
    fake.dilate = lambda masks, radius: masks
    monkeypatch.setitem(sys.modules, "vilocal_dist.inpaint.propagation", fake)


def test_single_frame_mask_is_propagated(tiny_video, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    video, mask_dir, frames, masks = tiny_video
    calls: list = []
    _fake_propagation(monkeypatch, calls)
    out = tmp_path / "out"
    one = list_image_files(mask_dir)[2]
    argv = ["inpaint", str(video), "--mask", str(one), "--mask-frame", "2", "--out", str(out), "--method", "telea", "--quiet"]
    assert main(argv) == 0
    assert calls == [((T, H, W, 3), (H, W), 2)]
    np.testing.assert_array_equal(read_masks(out / "masks"), masks)
    record = json.loads((out / "result.json").read_text())
    assert record["input"]["mask_kind"] == "single" and record["input"]["mask_frame"] == 2


@pytest.mark.skipif(
    importlib.util.find_spec("vilocal_dist.inpaint.propagation") is None, reason="mask propagation not available yet"
)
def test_single_frame_mask_with_real_propagation(tiny_video, tmp_path: Path) -> None:
    video, mask_dir, frames, masks = tiny_video
    out = tmp_path / "out"
    one = list_image_files(mask_dir)[0]
    assert main(["inpaint", str(video), "--mask", str(one), "--out", str(out), "--method", "telea", "--quiet"]) == 0
    propagated = read_masks(out / "masks")
    assert propagated.shape == masks.shape and propagated[0].any()
    assert len(list_image_files(out / "frames")) == T


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask", "MISSING"], "no such mask"),
        (["--mask", "MASKS", "--mask-frame", "1"], "--mask-frame applies to a single mask"),
        (["--mask", "ONE", "--mask-frame", "9"], "outside the 5 frames"),
        (["--mask", "MASKS", "--set", "bogus=1"], "unknown option"),
        (["--mask", "MASKS", "--set", "novalue"], "expects key=value"),
        (["--mask", "MASKS", "--method", "flowpro"], "did you mean 'flowprop'"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_video, tmp_path, capsys, monkeypatch, extra, message) -> None:
    video, mask_dir, _, _ = tiny_video
    _fake_propagation(monkeypatch, [])
    names = {"MISSING": str(tmp_path / "nope"), "MASKS": str(mask_dir), "ONE": str(list_image_files(mask_dir)[0])}
    extra = [names.get(a, a) for a in extra]
    method = [] if "--method" in extra else ["--method", "telea"]
    assert main(["inpaint", str(video), "--out", str(tmp_path / "out"), "--quiet", *method, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out" / "result.json").exists()


def test_tiled_run_recorded_in_mlflow_with_its_seams(tmp_path: Path, mlflow_home) -> None:
    """Frames larger than --tile go coarse to fine; --mlflow records the run with seams.png."""
    import mlflow

    from vilocal_dist.tracking.setup import tracking_uri

    rng = np.random.default_rng(1)
    frames = cv2.resize(rng.integers(0, 256, (20, 25, 3)).astype(np.uint8), (200, 160), interpolation=cv2.INTER_CUBIC)
    frames = np.repeat(frames[None], 3, axis=0)
    masks = np.zeros(frames.shape[:3], bool)
    masks[:, 60:100, 70:140] = True  # across the tile seams
    video, mask_dir = write_png_folder(tmp_path / "v", frames), write_png_folder(tmp_path / "m", masks)
    out = tmp_path / "big"
    assert main(["inpaint", str(video), "--mask", str(mask_dir), "--out", str(out), "--method", "telea", "--tile", "128",
                 "--coarse", "64", "--preview", "none", "--quiet", "--mlflow"]) == 0
    assert (out / "seams.png").stat().st_size > 0
    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("vilocal-inpaint").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["method"] == "telea" and run.data.params["tile"] == "128"
    assert run.data.metrics["highres/tiles"] >= 2
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"result.json", "seams.png"}
