"""Classical baselines (telea, ns, flowprop) and the DIS flow helpers they share with InterVI."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint.registry import get_method, list_methods
from vilocal_dist.inpaint.flow import FlowCache, complete_flow, dis_flow, fb_consistent, warp
from vilocal_dist.inpaint.metrics import psnr

MAGENTA = np.array([255, 0, 255], np.uint8)


def translating_scene(t: int = 10, h: int = 64, w: int = 96, speed: int = 2, seed: int = 0) -> np.ndarray:
    """A smooth random texture panning right by ``speed`` px per frame: uint8 T×H×W×3."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 4, (w + speed * t) // 4, 3)).astype(np.uint8)
    texture = cv2.resize(coarse, (w + speed * t, h), interpolation=cv2.INTER_CUBIC)
    return np.stack([texture[:, speed * (t - i) : speed * (t - i) + w] for i in range(t)])


def hole_masks(t: int, h: int, w: int) -> np.ndarray:
    masks = np.zeros((t, h, w), bool)
    masks[:, h // 4 : h // 4 + 16, w // 2 - 8 : w // 2 + 8] = True
    return masks


@pytest.mark.parametrize("name", ["telea", "ns", "flowprop"])
def test_method_fills_only_the_hole(name: str) -> None:
    frames = translating_scene(t=6, h=48, w=64)
    masks = hole_masks(6, 48, 64)
    damaged = frames.copy()
    damaged[masks] = MAGENTA  # any real fill must change these pixels
    result = get_method(name)(damaged, masks, {"radius": 5}, progress=False)
    assert result.frames.shape == frames.shape and result.frames.dtype == np.uint8
    np.testing.assert_array_equal(result.frames[~masks], damaged[~masks])
    assert np.all(np.any(result.frames[masks] != MAGENTA, axis=-1))
    assert result.config["radius"] == 5 and result.config["method"] == name


def test_registered_and_unknown_option_rejected() -> None:
    assert {"telea", "ns", "flowprop"} <= set(list_methods())
    with pytest.raises(ConfigError, match="radius"):
        get_method("telea")(translating_scene(t=2), hole_masks(2, 64, 96), {"radiuss": 3})


def test_flowprop_beats_telea_on_a_translating_texture() -> None:
    # Every hole pixel is visible in some other frame: propagation recovers it, Telea only smears.
    frames = translating_scene(t=10, h=48, w=64)
    masks = hole_masks(10, 48, 64)
    flowprop = get_method("flowprop")(frames, masks, progress=False)
    telea = get_method("telea")(frames, masks, progress=False)
    psnr_flowprop = psnr(flowprop.frames, frames, masks)
    psnr_telea = psnr(telea.frames, frames, masks)
    assert flowprop.metrics["flowprop/propagated_fraction"] > 0.95
    assert psnr_flowprop > psnr_telea + 10.0
    assert psnr_flowprop > 30.0


def test_flowprop_without_motion_falls_back_to_telea() -> None:
    # A static video shows nothing new behind a static hole: nothing propagates, Telea fills it.
    still = np.repeat(translating_scene(t=1, h=48, w=64), 4, axis=0)
    masks = hole_masks(4, 48, 64)
    result = get_method("flowprop")(still, masks, progress=False)
    assert result.metrics["flowprop/propagated_fraction"] < 0.05
    telea = get_method("telea")(still, masks, progress=False)
    assert np.abs(result.frames.astype(int) - telea.frames).max() <= 2


def test_dis_flow_recovers_a_translation() -> None:
    frames = translating_scene(t=2, h=64, w=96, speed=3)
    flow = dis_flow(frames[1], frames[0])  # content moved right by 3: frame 1 -> frame 0 is -3 px in x
    inner = flow[8:-8, 8:-8]
    assert np.allclose(np.median(inner.reshape(-1, 2), axis=0), [-3.0, 0.0], atol=0.1)


def test_warp_shifts_by_integer_flow() -> None:
    image = np.arange(5 * 6, dtype=np.float32).reshape(5, 6)
    flow = np.zeros((5, 6, 2), np.float32)
    flow[..., 0] = 1.0  # sample one pixel to the right
    out = warp(image, flow)
    np.testing.assert_allclose(out[:, :-1], image[:, 1:])
    assert np.all(out[:, -1] == 0)  # outside the frame


def test_forward_backward_check() -> None:
    fwd = np.zeros((20, 20, 2), np.float32)
    fwd[..., 0] = 2.0
    consistent = fb_consistent(fwd, -fwd)
    assert consistent[:, :-2].all() and not consistent[:, -2:].any()  # last columns leave the frame
    assert not fb_consistent(fwd, fwd)[:, :-4].any()  # going +2 then +2 again is 4 px off


def test_complete_flow_is_exact_for_a_constant_field() -> None:
    flow = np.zeros((40, 50, 2), np.float32)
    flow[...] = (1.5, -0.5)
    hole = np.zeros((40, 50), bool)
    hole[10:30, 15:35] = True
    garbage = flow.copy()
    garbage[hole] = (40.0, 40.0)
    np.testing.assert_allclose(complete_flow(garbage, hole, margin=2), flow, atol=1e-5)


def test_flow_cache_masks() -> None:
    frames = translating_scene(t=3, h=48, w=64)
    masks = hole_masks(3, 48, 64)
    pair = FlowCache(frames, masks).pair(1, 0)
    assert pair.flow.shape == (48, 64, 2)
    assert not pair.known[masks[1]].any()  # hole pixels of the source are never "known flow"
    assert not (pair.reliable & ~pair.known).any()
    assert pair.reliable.mean() > 0.5
