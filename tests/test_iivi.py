"""IIVI: generator shapes, each loss on a hand-made case, augmentations, config, fit, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vilocal_dist.data.composed import compose_video
from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint.registry import get_method
from vilocal_dist.inpaint.iivi import PRESETS, IIVIConfig, IIVIGenerator, fit_one_video
from vilocal_dist.inpaint.iivi import trainer as trainer_module
from vilocal_dist.inpaint.iivi.augment import (
    GTransform,
    MaskAugmenter,
    apply_g_image,
    apply_g_mask,
    dilate_masks,
    sample_g,
    training_holes,
    warp,
)
from vilocal_dist.inpaint.iivi.generator import GatedConv
from vilocal_dist.inpaint.iivi.losses import (
    ambiguity_loss,
    contextual_loss,
    masked_l1,
    reconstruction_loss,
    stabilization_loss,
)
from vilocal_dist.inpaint.vgg import VGGFeatures

# ---------------------------------------------------------------- generator


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_generator_shapes_range_and_backward(name):
    torch.manual_seed(0)
    gen = IIVIGenerator(name)
    frames = torch.rand(2, 3, 22, 30)  # not a multiple of 4: padded inside, cropped back
    holes = torch.zeros(2, 1, 22, 30, dtype=torch.bool)
    holes[:, :, 5:12, 8:20] = True
    out = gen(frames, holes)
    assert set(out) == {"coarse", "refine"}
    for value in out.values():
        assert value.shape == (2, 3, 22, 30) and torch.isfinite(value).all()
        assert value.min() >= 0 and value.max() <= 1
    (out["coarse"].mean() + out["refine"].mean()).backward()
    assert all(p.grad is not None for p in gen.parameters())


def test_gated_conv_halves_the_nominal_width_and_gates():
    conv = GatedConv(4, 8, k=3)
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.bias.copy_(torch.tensor([1.0, -1, 2, 0, 0, 0, 100, -100]))
    out = conv(torch.zeros(1, 4, 5, 5))
    assert out.shape == (1, 4, 5, 5)
    # ELU(a)·σ(b) per channel pair: ELU(1)·½, ELU(−1)·½, ELU(2)·1, ELU(0)·0.
    expected = torch.tensor([0.5, (math.exp(-1) - 1) * 0.5, 2.0, 0.0])
    torch.testing.assert_close(out[0, :, 2, 2], expected)


def test_paper_preset_size():
    n = sum(p.numel() for p in IIVIGenerator("paper").parameters())
    assert 3e6 < n < 6e6  # DeepFill-v2-sized coarse-to-fine network at base width 48


# ---------------------------------------------------------------- losses


def test_reconstruction_loss_hand_computed():
    target = torch.ones(1, 3, 4, 4)
    supervised = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    supervised[..., :2, :] = True
    coarse = torch.zeros(1, 3, 4, 4)  # error 1 everywhere
    refine = torch.full((1, 3, 4, 4), 0.75)  # error 0.25
    coarse[..., 2:, :] = refine[..., 2:, :] = -50  # unsupervised rows: any error is ignored
    loss = reconstruction_loss({"coarse": coarse, "refine": refine}, target, supervised)
    assert loss.item() == pytest.approx(1.0 + 0.25)
    assert masked_l1(coarse - target, torch.zeros_like(supervised)).item() == 0


def test_contextual_loss_minimal_for_identical_or_shuffled_features():
    feats = torch.randn(2, 16, 5, 7)
    assert contextual_loss(feats, feats).item() == pytest.approx(0, abs=1e-6)
    perm = torch.randperm(35)
    shuffled = feats.flatten(2)[:, :, perm].view_as(feats)  # unaligned but same content
    assert contextual_loss(shuffled, feats).item() == pytest.approx(0, abs=1e-6)
    assert contextual_loss(torch.randn(2, 16, 5, 7), feats).item() > 0.1


def test_contextual_loss_hand_case():
    source = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    target = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).T.reshape(1, 2, 1, 2)  # points (0,1), (1,1)
    assert contextual_loss(source, target).item() == pytest.approx(1 - 1 / math.sqrt(2))


def test_contextual_loss_matches_full_min_in_value_and_gradient():
    torch.manual_seed(1)
    target = torch.randn(2, 8, 4, 5)
    a = torch.randn(2, 8, 3, 6, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    fast = contextual_loss(a, target)
    fast.backward()
    s = torch.nn.functional.normalize(b.flatten(2).transpose(1, 2), dim=-1)
    t = torch.nn.functional.normalize(target.flatten(2).transpose(1, 2), dim=-1)
    full = (1 - torch.bmm(s, t.transpose(1, 2))).min(dim=-1).values.mean()
    full.backward()
    torch.testing.assert_close(fast, full)
    torch.testing.assert_close(a.grad, b.grad)


def test_ambiguity_loss_ignores_the_target_frames_hole():
    vgg = VGGFeatures("vgg19", ("relu2_1",), random_seed=0)
    frame = torch.rand(1, 3, 16, 16)
    hole = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    hole[..., 4:12, 4:12] = True
    other = frame.clone()
    other[..., 4:12, 4:12] = torch.rand(1, 3, 8, 8)  # differs only inside X_t's hole
    assert ambiguity_loss(vgg, "relu2_1", other, frame, hole).item() == pytest.approx(0, abs=1e-5)
    assert ambiguity_loss(vgg, "relu2_1", torch.rand(1, 3, 16, 16), frame, hole).item() > 1e-3


def _translation(dx: float, dy: float, batch: int = 1) -> GTransform:
    matrix = torch.eye(3).repeat(batch, 1, 1)
    matrix[:, 0, 2], matrix[:, 1, 2] = dx, dy
    return GTransform(matrix, torch.ones(batch), (3,) * batch)


def test_stabilisation_loss_vanishes_for_an_equivariant_map():
    x = torch.rand(2, 3, 12, 16)
    keep = torch.ones(2, 1, 12, 16, dtype=torch.bool)
    for g in (_translation(2, -1, 2), sample_g(np.random.default_rng(0), 2, 12, 16, torch.device("cpu"))):
        gx = apply_g_image(x, g)
        # f = identity commutes with every g: (f(gx) − f(x)) − (gx − x) = 0.
        assert stabilization_loss(x, gx, x, gx, keep).item() == 0
    # f = constant ignores its input: the loss is then exactly the mean |gx − x| over kept pixels.
    g = _translation(1, 0, 2)
    gx = apply_g_image(x, g)
    c = torch.full_like(x, 0.3)
    keep[..., :, :8] = False
    expected = (gx - x)[..., 8:].abs().mean()
    torch.testing.assert_close(stabilization_loss(c, c, x, gx, keep), expected)


def test_warps_translate_images_and_masks():
    x = torch.rand(1, 3, 10, 12)
    moved = warp(x, _translation(2, 1))
    torch.testing.assert_close(moved[..., 1:, 2:], x[..., :-1, :-2])
    mask = torch.zeros(1, 1, 10, 12, dtype=torch.bool)
    mask[..., 3:5, 3:6] = True
    moved_mask = apply_g_mask(mask, _translation(2, 1))
    assert moved_mask.dtype == torch.bool and moved_mask[..., 4:6, 5:8].all()
    assert moved_mask.sum() == 6


def test_sampled_g_stays_in_the_papers_ranges():
    g = sample_g(np.random.default_rng(0), 200, 64, 96, torch.device("cpu"))
    assert ((g.intensity >= 0.95) & (g.intensity <= 1.05)).all() and set(g.blur) == {3, 5}
    centre = torch.tensor([95 / 2, 63 / 2, 1.0])
    shift = (g.matrix @ centre)[:, :2] - centre[:2]  # rotation, scale, shear fix the centre
    assert shift.abs().max() <= 3 + 1e-4
    det = torch.linalg.det(g.matrix[:, :2, :2])
    assert ((det >= 0.95**2 - 1e-4) & (det <= 1.05**2 + 1e-4)).all()


# ---------------------------------------------------------------- augmentation


def _moving_square_masks(t: int = 5, h: int = 24, w: int = 32) -> np.ndarray:
    masks = np.zeros((t, h, w), bool)
    for i in range(t):
        masks[i, 4:10, 2 + 4 * i : 8 + 4 * i] = True
    return masks


def test_augmented_holes_never_supervise_the_own_hole():
    masks = _moving_square_masks()
    pool = torch.from_numpy(masks)[:, None]
    holdout = torch.zeros_like(pool)
    holdout[:, :, 18:22, 20:26] = True
    aug = MaskAugmenter(masks)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = rng.integers(len(masks), size=4)
        params = aug.sample(rng, idx)
        shifted = MaskAugmenter.apply(pool, params)
        assert [int(s.sum()) for s in shifted] == [int(masks[t].sum()) for t, _, _ in params]  # cyclic: no loss
        own = pool[torch.from_numpy(idx)]
        hole, supervised = training_holes(own, shifted, holdout[: len(idx)])
        assert not (supervised & own).any() and not (supervised & holdout[: len(idx)]).any()
        assert torch.equal(hole, own | shifted | holdout[: len(idx)])
        assert torch.equal(supervised & shifted, shifted & ~own & ~holdout[: len(idx)])  # the self-supervision


def test_boundary_aware_sampling_prefers_the_mask_border():
    masks = np.zeros((3, 64, 120), bool)
    masks[:, 2:8, 2:8] = True  # a small object in the top-left corner
    band_y, band_x = round(45 / 320 * 64), round(80 / 600 * 120)

    def near_fraction(boundary_aware: bool) -> float:
        aug, rng = MaskAugmenter(masks, boundary_aware=boundary_aware), np.random.default_rng(0)
        params = aug.sample(rng, np.zeros(2000, int))
        centres = [((4 + dy) % 64, (4 + dx) % 120) for _, dy, dx in params]  # the square's centre is (4, 4)
        return np.mean([y <= 7 + band_y and x <= 7 + band_x for y, x in centres])

    uniform, boosted = near_fraction(False), near_fraction(True)
    expected = 5 * uniform / (5 * uniform + 1 - uniform)
    assert boosted == pytest.approx(expected, abs=0.05) and boosted > 2 * uniform


def test_dilation_uses_a_square_kernel():
    masks = np.zeros((1, 30, 30), bool)
    masks[0, 15, 15] = True
    assert dilate_masks(masks, 12).sum() == 144 and dilate_masks(masks, 0).sum() == 1


# ---------------------------------------------------------------- config and registry


def test_config_from_dict_rejects_unknown_keys_and_bad_types():
    assert IIVIConfig.from_dict({"iters_recon": 1e3, "lambda_a": 1}).iters_recon == 1000
    with pytest.raises(ConfigError, match="unknown option"):
        IIVIConfig.from_dict({"lamda_a": 0.1})
    with pytest.raises(ConfigError, match="wrong type"):
        IIVIConfig.from_dict({"iters_recon": "many"})
    with pytest.raises(ConfigError, match="preset"):
        IIVIConfig(preset="huge")
    with pytest.raises(ConfigError, match="vgg_layer"):
        IIVIConfig(vgg_layer="relu9_9")


def test_missing_vgg_weights_refuse_before_training(monkeypatch):
    monkeypatch.delenv("VILOCAL_VGG19_WEIGHTS", raising=False)
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    masks = np.zeros((2, 16, 16), bool)
    with pytest.raises(ConfigError, match="random_vgg"):
        get_method("iivi")(frames, masks, {"preset": "tiny", "iters_recon": 10**6, "iters_reg": 1}, progress=False)


# ---------------------------------------------------------------- fitting


def test_tiny_fit_lowers_the_hole_error():
    video = compose_video(0, 6, size=(48, 64))
    cfg = {"preset": "tiny", "iters_reg": 0, "batch": 3, "lr": 1e-3, "dilate": 3, "holdout": 0.05}
    gt = video.backgrounds
    first = fit_one_video(video.frames, video.masks, {**cfg, "iters_recon": 1}, gt_frames=gt, progress=False)
    fitted = fit_one_video(video.frames, video.masks, {**cfg, "iters_recon": 100}, gt_frames=gt, progress=False)
    # Measured: 12.3 → 16.4 dB in the hole, 12.9 → 16.8 dB on held-out pixels after 100 iterations.
    assert fitted.metrics["true/hole_psnr"] > first.metrics["true/hole_psnr"] + 2.0
    assert fitted.metrics["selfval/psnr"] > first.metrics["selfval/psnr"] + 2.0
    assert fitted.metrics["train/rec"] < first.metrics["train/rec"]
    # Composited: every pixel outside the hole (held-out ones included) is the input's.
    assert np.array_equal(fitted.frames[~video.masks], video.frames[~video.masks])
    assert fitted.frames.dtype == np.uint8 and fitted.frames.shape == video.frames.shape


def test_regularised_fit_records_a_random_vgg(monkeypatch):
    monkeypatch.delenv("VILOCAL_VGG19_WEIGHTS", raising=False)
    video = compose_video(1, 3, size=(32, 48))
    cfg = {"preset": "tiny", "iters_recon": 1, "iters_reg": 2, "batch": 2, "random_vgg": True}
    cfg |= {"size_h": 24, "size_w": 32}
    result = get_method("iivi")(video.frames, video.masks, cfg, progress=False)
    assert result.config["vgg"] == "random(seed=0)" and result.config["lambda_a"] == 0.1
    assert all(math.isfinite(result.metrics[k]) for k in ("train/amb", "train/stab", "train/rec", "selfval/psnr"))
    assert result.frames.shape == video.frames.shape  # back at native size after a 24×32 working size
    assert np.array_equal(result.frames[~video.masks], video.frames[~video.masks])


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    video = compose_video(2, 3, size=(32, 48))
    cfg = {"preset": "tiny", "iters_recon": 4, "iters_reg": 4, "batch": 2, "random_vgg": True, "lr": 1e-3}
    cfg |= {"ckpt_every": 2}
    straight = fit_one_video(video.frames, video.masks, cfg, seed=5, progress=False, workdir=tmp_path / "a")

    real_step, calls = trainer_module.IIVITrainer.step, []

    def flaky_step(self):
        if len(calls) == 5:  # dies during iteration 6, after the checkpoint at 4 (in phase 2 from 5 on)
            raise _Interrupt
        calls.append(self.iteration)
        return real_step(self)

    monkeypatch.setattr(trainer_module.IIVITrainer, "step", flaky_step)
    with pytest.raises(_Interrupt):
        fit_one_video(video.frames, video.masks, cfg, seed=5, progress=False, workdir=tmp_path / "b")
    monkeypatch.setattr(trainer_module.IIVITrainer, "step", real_step)
    resumed = fit_one_video(video.frames, video.masks, cfg, seed=5, progress=False, workdir=tmp_path / "b")

    assert resumed.metrics["train/iters"] == 8
    assert resumed.metrics["train/iters_per_s"] > 0  # it trained (iterations 5–8), not just reloaded
    for key in ("train/rec", "train/amb", "train/stab"):
        assert resumed.metrics[key] == straight.metrics[key]
    assert np.array_equal(resumed.frames, straight.frames)
    a = torch.load(tmp_path / "a" / "iivi_state.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "iivi_state.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(ConfigError, match="another video, config or seed"):
        fit_one_video(video.frames, video.masks, cfg, seed=6, progress=False, workdir=tmp_path / "b")


def test_recompute_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = IIVIGenerator("tiny")
    recomputing = IIVIGenerator("tiny", recompute=True)
    recomputing.load_state_dict(plain.state_dict())
    frames, holes = torch.rand(2, 3, 16, 24), torch.rand(2, 1, 16, 24) > 0.7
    for gen in (plain, recomputing):
        out = gen(frames, holes)
        (out["coarse"].square().mean() + out["refine"].mean()).backward()
    for a, b in zip(plain.parameters(), recomputing.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_two_pass_stabilisation_gradient_equals_the_joint_loss(monkeypatch):
    monkeypatch.delenv("VILOCAL_VGG19_WEIGHTS", raising=False)
    video = compose_video(3, 3, size=(24, 32))
    holes = dilate_masks(video.masks, 3)
    tensors = trainer_module.VideoTensors.from_numpy(video.frames, holes, np.zeros_like(holes), torch.device("cpu"))
    cfg = IIVIConfig(preset="tiny", iters_recon=0, iters_reg=1, batch=2, lambda_a=0.0, lambda_s=0.5, lr=1.0)
    trainer = trainer_module.IIVITrainer(tensors, cfg, seed=0, device=torch.device("cpu"))
    trainer.opt = torch.optim.SGD(trainer.model.parameters(), lr=0.0)  # keep the weights: only read grads
    rng_state = trainer.rng.bit_generator.state
    trainer.step()
    two_pass = [p.grad.clone() for p in trainer.model.parameters()]

    # The joint loss, written naively with both graphs alive, from the same random draws.
    trainer.rng.bit_generator.state = rng_state
    idx = trainer.rng.choice(3, size=2, replace=False)
    augmented = MaskAugmenter.apply(tensors.holes, trainer.augmenter.sample(trainer.rng, idx))
    x, own = tensors.frames[idx], tensors.holes[idx]
    hole, supervised = training_holes(own, augmented, tensors.holdout[idx])
    out = trainer.model(x, hole)
    gx, g_hole, keep = trainer._stabilisation_input(x, hole, ~supervised)
    joint = reconstruction_loss(out, x, supervised) + 0.5 * stabilization_loss(
        out["refine"], trainer.model(gx, g_hole)["refine"], x, gx, keep
    )
    grads = torch.autograd.grad(joint, list(trainer.model.parameters()))
    for a, b in zip(two_pass, grads):
        torch.testing.assert_close(a, b)
