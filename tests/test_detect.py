"""`detect`: streaming windows, outputs for every frame, atomic folder, report fields."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from vilocal_dist.data.clips import frame_windows
from vilocal_dist.data.composed import compose_video
from vilocal_dist.engines.checkpoint import checkpoint_dict, save_checkpoint
from vilocal_dist.engines.config import TrainConfig
from vilocal_dist.engines.detect import detect_video, sliding_windows
from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.models import create_model
from vilocal_dist.video.io import read_frames, read_mask_image, write_video

CONST_P = 0.8


@pytest.fixture(scope="module")
def constant_model(tmp_path_factory):
    """A stage-2 checkpoint whose decoder outputs logit(0.8) everywhere (weights zero, bias set)."""
    model = create_model("vilocal_tiny")
    with torch.no_grad():
        model.decoder.head.weight.zero_()
        model.decoder.head.bias.fill_(math.log(CONST_P / (1 - CONST_P)))
    cfg = TrainConfig(model="vilocal_tiny", size_h=32, size_w=48)
    ckpt = checkpoint_dict(model, model_name="vilocal_tiny", stage=2, epoch=0, samples_seen=0,
                           train_config=cfg.to_dict(), metrics={})
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def odd_video(tmp_path_factory):
    """A 7-frame lossless video of odd size 33×47 (not the model's 32×48)."""
    frames = compose_video(11, 7, (33, 47)).frames
    return write_video(tmp_path_factory.mktemp("video") / "clip.mkv", frames, codec="ffv1")


@pytest.mark.parametrize("num_frames", range(1, 10))
def test_sliding_windows_match_the_clip_dataset(num_frames):
    assert [w for _, w in sliding_windows(range(num_frames))] == frame_windows(num_frames)


def test_sliding_windows_read_only_two_frames_ahead():
    consumed = []

    def stream():
        for i in range(50):
            consumed.append(i)
            yield np.full((2, 2), i)

    for t, window in sliding_windows(stream()):
        assert len(consumed) <= t + 3  # frames 0 … t+2 read, nothing further
        assert [int(w[0, 0]) for w in window] == frame_windows(50)[t]


def test_detect_writes_every_frame_and_a_complete_report(constant_model, odd_video, tmp_path):
    out = tmp_path / "det"
    report = detect_video(odd_video, constant_model, out, threshold=0.5, progress=False)
    probs, masks = sorted((out / "probs").glob("*.png")), sorted((out / "masks").glob("*.png"))
    assert len(probs) == len(masks) == 7
    prob0 = read_frames(out / "probs", max_frames=1)[0, ..., 0]
    assert prob0.shape == (33, 47) and np.all(prob0 == round(CONST_P * 255))  # lossless 8-bit, native size
    assert read_mask_image(masks[0]).all()
    overlay = read_frames(out / "overlay.mp4")
    assert overlay.shape == (7, 34, 48, 3)  # padded to even for H.264
    assert overlay[..., 0].mean() > overlay[..., 2].mean()  # red tint over the whole (detected) frame
    assert not (out / ".tmp").exists()

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["frames"] == 7 and [f["frame"] for f in on_disk["per_frame"]] == list(range(7))
    assert on_disk["input_sha256"] == hashlib.sha256(odd_video.read_bytes()).hexdigest()
    assert on_disk["threshold"] == 0.5 and on_disk["model_size"] == [32, 48]
    assert on_disk["model_name"] == "vilocal_tiny" and on_disk["model_config"]["widths"] == [8, 16, 32, 64]
    assert all(f["forged_fraction"] == 1.0 for f in on_disk["per_frame"])
    assert on_disk["video_score"] == pytest.approx(CONST_P, abs=1e-5)
    assert "99th-percentile" in on_disk["video_score_definition"]


def test_detect_threshold_and_rerun_replace_outputs(constant_model, odd_video, tmp_path):
    out = tmp_path / "det"
    detect_video(odd_video, constant_model, out, threshold=0.5, progress=False)
    report = detect_video(odd_video, constant_model, out, threshold=0.9, progress=False)
    assert all(f["forged_fraction"] == 0.0 for f in report["per_frame"])
    assert not any(read_mask_image(p).any() for p in (out / "masks").glob("*.png"))
    assert json.loads((out / "report.json").read_text())["threshold"] == 0.9


def test_detect_rejects_bad_inputs(constant_model, tmp_path):
    with pytest.raises(InputError):
        detect_video(tmp_path / "missing.mp4", constant_model, tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="threshold"):
        detect_video("composed:1:5:32x48", constant_model, tmp_path / "o", threshold=1.0, progress=False)
    ckpt = torch.load(constant_model, weights_only=True)
    stage1 = save_checkpoint({**ckpt, "stage": 1}, tmp_path / "s1")
    with pytest.raises(ConfigError, match="stage-2"):
        detect_video("composed:1:5:32x48", stage1, tmp_path / "o", progress=False)


def test_in_background_keeps_order_bounds_lookahead_and_raises_worker_errors() -> None:
    import threading

    from vilocal_dist.engines.detect import in_background

    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    stream = in_background(items(), depth=3)
    assert next(stream) == 0
    threading.Event().wait(0.3)  # the worker fills the queue, then blocks
    assert len(produced) <= 1 + 3 + 1  # consumed + queued + the one waiting to be put
    assert list(stream) == list(range(1, 50))

    def failing():
        yield 1
        raise OSError("frame 2 does not decode")

    with pytest.raises(OSError, match="frame 2"):
        list(in_background(failing(), depth=2))

    endless = in_background(iter(int, 1), depth=2)  # a consumer that stops early stops the worker
    next(endless)
    endless.close()
    assert not any(t.name == "detect-stage" and t.is_alive() for t in threading.enumerate())
