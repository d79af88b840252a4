"""InterVI: config, network, losses on hand-made cases, curriculum, the method and its resume."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint.registry import get_method
from vilocal_dist.inpaint.intervi.config import InterVIConfig, resolve_config
from vilocal_dist.inpaint.intervi.losses import BatchTargets, backward_warp, consistency_loss, flow_scale, masked_mse
from vilocal_dist.inpaint.intervi.net import SkipNet, padded_size
from vilocal_dist.inpaint.intervi.train import CHECKPOINT_NAME, batch_at, curriculum

MAGENTA = np.array([255, 0, 255], np.uint8)
TINY = {"preset": "tiny", "iterations": 6, "updates_per_batch": 3, "checkpoint_every": 3}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions on a shared 2-core box: thread hand-offs cost more than the maths.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_vgg_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VILOCAL_VGG16_WEIGHTS", raising=False)


def scene(t: int = 6, h: int = 24, w: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (h // 4, (w + 2 * t) // 4, 3)).astype(np.uint8)
    texture = cv2.resize(coarse, (w + 2 * t, h), interpolation=cv2.INTER_CUBIC)
    frames = np.stack([texture[:, 2 * (t - i) : 2 * (t - i) + w] for i in range(t)])
    masks = np.zeros((t, h, w), bool)
    masks[:, 8:16, 12:20] = True
    frames[masks] = MAGENTA
    return frames, masks


def test_config_presets_and_overrides() -> None:
    paper = resolve_config(None)
    assert paper.widths == (16, 32, 64, 128, 128, 128)
    assert paper.signed_offsets == (1, -1, 3, -3, 5, -5)
    assert (paper.batch_frames, paper.updates_per_batch, paper.lr) == (5, 100, 1e-2)
    tiny = resolve_config({"preset": "tiny", "scales": 2, "offsets": "2"})
    assert tiny.scales == 2 and tiny.width_max == 16  # explicit key beats the preset, preset beats default
    assert tiny.signed_offsets == (2, -2)
    coerced = resolve_config({"iterations": 1e3, "lr": 1, "offsets": 2})
    assert (coerced.iterations, coerced.lr, coerced.offsets) == (1000, 1.0, "2")
    with pytest.raises(ConfigError, match="scales expects int"):
        resolve_config({"scales": 2.5})
    with pytest.raises(ConfigError, match="unknown option"):
        resolve_config({"lr_rate": 1})
    with pytest.raises(ConfigError, match="offsets"):
        resolve_config({"offsets": "1,x"})
    with pytest.raises(ConfigError, match="preset"):
        resolve_config({"preset": "huge"})


def test_skipnet_shapes() -> None:
    hp, wp = padded_size(24, 30, 3, 5)
    assert (hp, wp) == (24, 32)
    assert padded_size(8, 8, 3, 5) == (24, 24)  # coarsest map must exceed the reflection pad
    net = SkipNet(widths=(4, 8, 8), flow_channels=4)
    with torch.no_grad():
        out = net(torch.rand(2, 1, hp, wp))
    assert out["image"].shape == (2, 3, hp, wp) and out["flow"].shape == (2, 4, hp, wp)
    assert 0 <= float(out["image"].min()) and float(out["image"].max()) <= 1
    assert float(out["flow"].abs().max()) == 0.0  # flow head starts at zero motion


def test_masked_mse_and_warp() -> None:
    pred, target = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert float(masked_mse(pred, target, mask)) == pytest.approx(3 / 12)
    image = torch.arange(20.0).view(1, 1, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 0] = 1.0  # each pixel samples its right neighbour
    warped, inside = backward_warp(image, flow)
    torch.testing.assert_close(warped[..., :-1], image[..., 1:])
    assert inside[..., :-1].all() and not inside[..., -1].any()


def test_consistency_loss_zero_when_flow_explains_the_frames() -> None:
    h, w = 6, 8
    frame_j = torch.rand(1, 3, h, w)
    frame_i = torch.roll(frame_j, shifts=-1, dims=-1)  # i(x) = j(x + 1)
    flow_px = torch.zeros(1, 2, h, w)
    flow_px[:, 0] = 1.0
    flow = flow_px / flow_scale(h, w)
    images = torch.cat([frame_i, frame_j])
    flows = torch.cat([flow, torch.zeros_like(flow)])
    targets = BatchTargets(
        frames=images, known=torch.ones(2, 1, h, w), ref_flow=flows, reliable=torch.zeros(2, 1, h, w),
        known_flow=torch.zeros(2, 1, h, w), partner=torch.tensor([1, -1]),
    )  # fmt: skip
    assert float(consistency_loss(images, flows, targets)) < 1e-10
    assert float(consistency_loss(images, flows * 0, targets)) > 1e-3  # zero flow does not explain it
    targets.known_flow[:] = 1.0  # reference flow covers everything: the term does not apply
    assert float(consistency_loss(images, flows * 0, targets)) == 0.0


def test_curriculum_and_schedule() -> None:
    config = InterVIConfig()
    batches = curriculum(12, config)
    # stride 1: 8 starts of 5 frames; stride 3: 4 frames fit, 3 starts; stride 5: 3 frames, 2 starts; ×2 directions
    assert len(batches) == 2 * (8 + 3 + 2)
    assert (1, [0, 1, 2, 3, 4]) in batches and (-1, [7, 8, 9, 10, 11]) in batches
    assert (-3, [2, 5, 8, 11]) in batches and (5, [1, 6, 11]) in batches
    assert curriculum(2, config)[:2] == [(1, [0, 1]), (-1, [0, 1])] and len(curriculum(2, config)) == 10
    # One epoch visits every batch once, each for updates_per_batch consecutive updates.
    epoch = [batch_at(s, batches, 10, seed=0) for s in range(0, 10 * len(batches), 10)]
    assert sorted(map(str, epoch)) == sorted(map(str, batches))
    assert batch_at(3, batches, 10, 0) == batch_at(9, batches, 10, 0)
    assert [batch_at(s, batches, 1, 0) for s in range(26)] != [batch_at(s, batches, 1, 1) for s in range(26)]


def test_intervi_through_the_shared_interface(tmp_path: Path) -> None:
    frames, masks = scene()
    result = get_method("intervi")(frames, masks, TINY, progress=False, workdir=tmp_path)
    np.testing.assert_array_equal(result.frames[~masks], frames[~masks])
    assert np.all(np.any(result.frames[masks] != MAGENTA, axis=-1))
    assert result.config["perceptual"] == "off (no VGG-16 weights)"
    assert result.config["scales"] == 3 and result.config["iterations"] == 6
    assert result.metrics["train/updates"] == 6
    assert np.isfinite(result.metrics["train/loss"])
    assert (tmp_path / CHECKPOINT_NAME).is_file()


def test_resume_from_a_finished_checkpoint(tmp_path: Path) -> None:
    frames, masks = scene()
    first = get_method("intervi")(frames, masks, TINY, progress=False, workdir=tmp_path)
    stamp = (tmp_path / CHECKPOINT_NAME).stat().st_mtime_ns
    again = get_method("intervi")(frames, masks, TINY, progress=False, workdir=tmp_path)
    np.testing.assert_array_equal(again.frames, first.frames)  # no training: the saved network regenerates
    assert again.metrics == first.metrics
    assert (tmp_path / CHECKPOINT_NAME).stat().st_mtime_ns == stamp
    other = get_method("intervi")(frames, masks, {**TINY, "lr": 0.02}, progress=False, workdir=tmp_path)
    assert other.metrics["train/updates"] == 6  # another config: started afresh, not resumed
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["config"]["lr"] == 0.02


def test_resume_continues_an_interrupted_run(tmp_path: Path) -> None:
    frames, masks = scene()
    straight = get_method("intervi")(frames, masks, TINY, progress=False, workdir=tmp_path / "a")
    # The same run stopped after 3 updates, then asked for all 6: it resumes at update 3.
    get_method("intervi")(frames, masks, {**TINY, "iterations": 3}, progress=False, workdir=tmp_path / "b")
    assert torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=False)["step"] == 3
    resumed = get_method("intervi")(frames, masks, TINY, progress=False, workdir=tmp_path / "b")
    assert resumed.metrics["train/updates"] == 6
    np.testing.assert_array_equal(resumed.frames, straight.frames)


def test_perceptual_term_with_a_local_vgg16_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A random VGG-16 in torchvision's layout stands in for real weights (nothing is downloaded).
    layers = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
    gen, state, index, in_ch = torch.Generator().manual_seed(0), {}, 0, 3
    for item in layers:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(item, in_ch, 3, 3, generator=gen) * 0.05
        state[f"features.{index}.bias"] = torch.zeros(item)
        index, in_ch = index + 2, item
    weights = tmp_path / "vgg16.pth"
    torch.save(state, weights)
    frames, masks = scene(t=3)
    cfg = {**TINY, "iterations": 2, "updates_per_batch": 1, "vgg_weights": str(weights)}
    result = get_method("intervi")(frames, masks, cfg, progress=False)
    assert result.config["perceptual"].startswith("on (VGG-16 file(")
    assert result.metrics["train/perceptual"] > 0
    off = get_method("intervi")(frames, masks, {**cfg, "w_perceptual": 0.0}, progress=False)
    assert off.config["perceptual"] == "off (w_perceptual=0)"
