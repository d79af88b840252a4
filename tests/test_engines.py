"""Engines without Ray: config, metrics (hand-computed), checkpoint, stage loops, resume, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vilocal_dist.data.composed import compose_video
from vilocal_dist.data.manifest import ForgedDataset
from vilocal_dist.engines.checkpoint import build_model, load_checkpoint, save_checkpoint
from vilocal_dist.config import parse_sets as parse_overrides
from vilocal_dist.engines.config import TrainConfig, check_stage, load_config
from vilocal_dist.engines.datasets import clip_dataset, split_train_val, training_datasets
from vilocal_dist.engines.evaluate import evaluate_checkpoint
from vilocal_dist.engines.forge import forge_local
from vilocal_dist.engines.loop import Runtime, cosine_lr, make_loader
from vilocal_dist.engines.metrics import MaskEvaluator
from vilocal_dist.engines.stage1 import train_stage1, validate_stage1
from vilocal_dist.engines.stage2 import train_stage2
from vilocal_dist.errors import ConfigError, InputError

SIZE = (32, 48)
TINY = dict(model="vilocal_tiny", size_h=SIZE[0], size_w=SIZE[1], compress_fraction=0.0, batch_size=2,
            stage1_epochs=2, stage1_lr=2e-3, stage2_epochs=2, stage2_lr=1e-2)


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    """Three tiny composed videos (5 frames) forged with telea: two train, one test."""
    root = tmp_path_factory.mktemp("forged")
    videos = [compose_video(seed, 5, SIZE) for seed in range(3)]
    forge_local(root, videos, ["telea"], splits={videos[0].name: "train", videos[1].name: "train",
                                                  videos[2].name: "test"}, progress=False)
    return root


# ----------------------------------------------------------------------------- config


def test_config_defaults_are_the_papers():
    cfg = TrainConfig()
    assert (cfg.stage1_lr, cfg.stage1_min_lr, cfg.stage1_weight_decay, cfg.stage1_epochs) == (5e-4, 5e-6, 1e-4, 10)
    assert (cfg.stage2_lr, cfg.stage2_min_lr, cfg.stage2_weight_decay, cfg.stage2_epochs) == (1e-4, 1e-6, 1e-4, 5)
    assert (cfg.batch_size, cfg.tau, cfg.alpha, cfg.gamma, cfg.size) == (2, 0.1, 0.5, 2.0, (240, 432))


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'tau'"):
        TrainConfig.from_dict({"tua": 0.2})
    for bad in ({"tau": 0.0}, {"alpha": 1.5}, {"gamma": -1}, {"stage1_min_lr": 1.0}, {"stage2_epochs": 2.5}):
        with pytest.raises(ConfigError):
            TrainConfig.from_dict(bad)
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("tau: 0.2\nalhpa: 0.3\n")
    with pytest.raises(ConfigError, match="train.yaml.*alhpa"):
        load_config(yaml_file)


def test_config_yaml_then_overrides(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("tau: 0.2\nmodel: vilocal_small\nstage1_epochs: 3\n")
    cfg = load_config(yaml_file, parse_overrides(["stage1_epochs=7", "stage1_lr=1e-3", "alpha=0.25"]))
    assert (cfg.tau, cfg.model, cfg.stage1_epochs, cfg.stage1_lr, cfg.alpha) == (0.2, "vilocal_small", 7, 1e-3, 0.25)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["tau"])


def test_stage2_encoder_modes_and_shared_stage1_are_config_fields():
    assert TrainConfig().stage2_encoder_optim() is None  # the paper: frozen
    tuned = TrainConfig(stage2_encoder_lr_factor=0.1).stage2_encoder_optim()
    assert (tuned.lr, tuned.min_lr, tuned.epochs) == (pytest.approx(1e-5), pytest.approx(1e-7), 5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="stage2_encoder_lr_factor must be in"):
            TrainConfig(stage2_encoder_lr_factor=bad)
    with pytest.raises(ConfigError, match="joint training already trains the encoder"):
        check_stage("joint", TrainConfig(stage2_encoder_lr_factor=0.1))
    check_stage("random", TrainConfig(stage2_encoder_lr_factor=0.1))
    with pytest.raises(ConfigError, match="stage must be one of 1, 2, both, joint, random"):
        check_stage("3", TrainConfig())
    # Fine-tuning, α or the stage-2 lr change nothing in stage 1; τ and the cell labels do.
    base = TrainConfig().stage1_identity()
    assert TrainConfig(stage2_encoder_lr_factor=0.1, alpha=0.75, stage2_lr=1e-3).stage1_identity() == base
    assert TrainConfig(tau=0.2).stage1_identity() != base
    assert TrainConfig(contrastive_labels="ignore_mixed").stage1_identity() != base


def test_cosine_schedule_endpoints():
    assert cosine_lr(0, 100, 5e-4, 5e-6) == pytest.approx(5e-4)
    assert cosine_lr(50, 100, 5e-4, 5e-6) == pytest.approx((5e-4 + 5e-6) / 2)
    assert cosine_lr(100, 100, 5e-4, 5e-6) == pytest.approx(5e-6)


# ----------------------------------------------------------------------------- metrics


def _masks(*coords, shape=(4, 4)):
    m = torch.zeros(shape)
    for r, c in coords:
        m[r, c] = 1
    return m


def test_evaluator_hand_computed_scores_and_empty_gt_convention():
    gt_a = _masks((0, 0), (0, 1), (1, 0), (1, 1))  # 4 forged pixels
    pred_a = _masks((0, 0), (0, 1), (3, 3))  # TP=2, FP=1, FN=2 -> F1=4/7, IoU=2/5
    empty = torch.zeros(4, 4)
    one_fp = _masks((2, 2))
    ev = MaskEvaluator(0.5)
    ev.update(torch.stack([pred_a, empty]), torch.stack([gt_a, empty]),
              videos=["v1", "v1"], methods=["telea", "telea"], frames=[0, 1])
    ev.update(one_fp[None], empty[None], videos=["v2"], methods=["ns"], frames=[0])  # empty GT, a false alarm
    out = ev.compute()
    f1 = [4 / 7, 1.0, 0.0]
    iou = [2 / 5, 1.0, 0.0]
    assert out["frames"] == 3 and out["videos"] == 2 and out["empty_gt_frames"] == 2
    assert out["pooled"]["f1"] == pytest.approx(np.mean(f1))
    assert out["pooled"]["iou"] == pytest.approx(np.mean(iou))
    assert out["per_video"]["f1"] == pytest.approx(((4 / 7 + 1) / 2 + 0) / 2)
    assert out["by_method"]["telea"]["pooled"]["f1"] == pytest.approx((4 / 7 + 1) / 2)
    assert out["by_method"]["ns"]["pooled"]["iou"] == 0.0
    assert out["video_scores"]["v1"] == {"method": "telea", "frames": 2, "empty_gt_frames": 1,
                                   "f1": pytest.approx((4 / 7 + 1) / 2), "iou": pytest.approx((2 / 5 + 1) / 2)}
    assert "empty prediction -> F1=IoU=1" in out["convention"]
    # Trivial predictors: all-zeros scores only the empty-GT frames; all-ones scores 2·4/(4+16) on frame 1.
    assert out["baselines"]["all_zeros"]["pooled"]["f1"] == pytest.approx(2 / 3)
    assert out["baselines"]["all_ones"]["pooled"]["f1"] == pytest.approx((8 / 20) / 3)
    assert out["baselines"]["all_ones"]["pooled"]["iou"] == pytest.approx((4 / 16) / 3)


def test_evaluator_threshold_is_strict():
    ev = MaskEvaluator(0.5)
    ev.update(torch.full((1, 1, 2, 2), 0.5), torch.ones(1, 1, 2, 2))  # 0.5 is not > 0.5: nothing predicted
    assert ev.compute()["pooled"] == {"f1": 0.0, "iou": 0.0}


# ----------------------------------------------------------------------------- data, checkpoint


def test_train_val_split_by_source_video(forged):
    records = ForgedDataset(forged).records(split="train")
    train, val = split_train_val(records, 0.1, 0)
    assert len(train) == 1 and len(val) == 1
    assert {r["source_video"] for r in train}.isdisjoint({r["source_video"] for r in val})
    with pytest.raises(InputError, match="no complete videos"):
        training_datasets(forged, TrainConfig(**TINY), methods=["iivi"])


def test_checkpoint_round_trip(tmp_path):
    from vilocal_dist.engines.checkpoint import checkpoint_dict
    from vilocal_dist.models import create_model

    model = create_model("vilocal_tiny").eval()
    ckpt = checkpoint_dict(model, model_name="vilocal_tiny", stage=2, epoch=3, samples_seen=40,
                           train_config=TrainConfig(**TINY).to_dict(), metrics={"val/f1": 0.5})
    path = save_checkpoint(ckpt, tmp_path / "ck")
    assert path.name == "model.pt"
    loaded = load_checkpoint(tmp_path / "ck")
    assert (loaded["stage"], loaded["epoch"], loaded["samples_seen"], loaded["train_config"]["tau"]) == (2, 3, 40, 0.1)
    clip = torch.rand(1, 3, 5, *SIZE)
    with torch.no_grad():
        assert torch.equal(build_model(loaded).eval()(clip)["pred_mask"], model(clip)["pred_mask"])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "junk.pt")


# ----------------------------------------------------------------------------- loops


@pytest.fixture(scope="module")
def trained(forged):
    """Stage 1 then stage 2, validating on the training clips to measure the fit."""
    torch.manual_seed(0)
    cfg = TrainConfig(**TINY)
    train_ds = clip_dataset(forged, ForgedDataset(forged).records(split="train"), cfg, train=True)
    before1 = validate_stage1(_fresh_model(), make_loader(train_ds, 2, train=False, seed=0, workers=0), cfg,
                              torch.device("cpu"))
    s1 = train_stage1(cfg, train_ds, train_ds, model=_fresh_model(), runtime=Runtime(progress=False))
    s2 = train_stage2(cfg, train_ds, train_ds, model=s1.model, runtime=Runtime(progress=False))
    return cfg, train_ds, before1, s1, s2


def _fresh_model():
    from vilocal_dist.models import create_model

    torch.manual_seed(0)
    return create_model("vilocal_tiny")


def test_stage1_lowers_contrastive_loss(trained):
    _, _, before, s1, _ = trained
    losses = [h["val/loss"] for h in s1.history]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert losses[-1] < 0.9 * before["val/loss"]
    assert [h["epoch"] for h in s1.history] == [0, 1]


def test_stage1_reports_positive_and_negative_similarity(trained):
    _, _, before, s1, _ = trained
    for epoch in s1.history:
        for key in ("train/pos_sim", "train/neg_sim", "val/pos_sim", "val/neg_sim"):
            assert -1.0 <= epoch[key] <= 1.0
    # What the loss optimises: anchors move closer to each other than to the negatives.
    last = s1.history[-1]
    assert last["val/pos_sim"] - last["val/neg_sim"] > before["val/pos_sim"] - before["val/neg_sim"]
    assert last["train/pos_sim"] > last["train/neg_sim"]


def test_stage2_lowers_focal_loss_and_keeps_encoder_frozen(trained):
    _, _, _, s1, s2 = trained
    first, last = s2.history[0], s2.history[-1]
    assert last["val/loss"] < first["val/loss"]
    assert last["train/loss"] < first["train/loss"]
    assert 0.0 <= last["val/f1"] <= 1.0 and 0.0 <= last["val/iou"] <= last["val/f1"] + 1e-9
    stage1_encoder = {k: v for k, v in s1.last_checkpoint["model_state"].items() if k.startswith("encoder.")}
    stage2_state = s2.last_checkpoint["model_state"]
    assert all(torch.equal(v, stage2_state[k]) for k, v in stage1_encoder.items())  # weights and BN stats
    assert s2.last_checkpoint["stage"] == 2 and s2.last_checkpoint["train_config"]["alpha"] == 0.5


def test_joint_mode_trains_encoder_and_decoder_with_focal_loss_only(forged):
    """The "w/o L_contra" ablation: one run, every weight moves, for stage1 + stage2 epochs."""
    cfg = TrainConfig(**{**TINY, "stage1_epochs": 1, "stage2_epochs": 2})
    train_ds = clip_dataset(forged, ForgedDataset(forged).records(split="train"), cfg, train=True)
    model = _fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_stage2(cfg, train_ds, train_ds, model=model, runtime=Runtime(progress=False), joint=True)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    after = result.last_checkpoint["model_state"]
    moved = {k.split(".")[0] for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}
    assert moved == {"encoder", "decoder"}
    # Each group decays from its own base lr: encoder from stage1_lr, decoder from stage2_lr.
    groups = {g["base_lr"]: g["lr"] for g in result.last_checkpoint["optim_state"]["param_groups"]}
    assert set(groups) == {cfg.stage1_lr, cfg.stage2_lr} and all(lr < base for base, lr in groups.items())


def test_stage2_fine_tunes_the_encoder_at_the_factor_of_the_decoder_lr(forged):
    """``stage2_encoder_lr_factor`` > 0: both parts move, for stage2_epochs, the encoder at factor × lr."""
    cfg = TrainConfig(**{**TINY, "stage2_epochs": 1, "stage2_encoder_lr_factor": 0.1})
    train_ds = clip_dataset(forged, ForgedDataset(forged).records(split="train"), cfg, train=True)
    model = _fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_stage2(cfg, train_ds, train_ds, model=model, runtime=Runtime(progress=False))
    assert len(result.history) == 1
    after = result.last_checkpoint["model_state"]
    moved = {k.split(".")[0] for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}
    assert moved == {"encoder", "decoder"}
    groups = sorted(g["base_lr"] for g in result.last_checkpoint["optim_state"]["param_groups"])
    assert groups == [pytest.approx(0.1 * cfg.stage2_lr), cfg.stage2_lr]


def test_use_hp3d_false_builds_an_rgb_encoder_that_checkpoints_round_trip(forged, tmp_path):
    cfg = TrainConfig(**{**TINY, "stage1_epochs": 1, "use_hp3d": False})
    train_ds = clip_dataset(forged, ForgedDataset(forged).records(split="train"), cfg, train=True)
    s1 = train_stage1(cfg, train_ds, train_ds, runtime=Runtime(progress=False))
    assert isinstance(s1.model.encoder.hp3d, torch.nn.Identity)
    rebuilt = build_model(load_checkpoint(save_checkpoint(s1.last_checkpoint, tmp_path)))
    assert rebuilt.config.use_hp3d is False and isinstance(rebuilt.encoder.hp3d, torch.nn.Identity)


class _Crash(Exception):
    pass


def test_resume_after_a_crash_matches_an_uninterrupted_run(trained):
    """Stop a 2-epoch run after epoch 0, resume from its checkpoint: epoch 1 is the same as without the stop."""
    cfg, train_ds, _, s1, _ = trained
    saved, seen = [], []

    def crash_after_epoch(end):
        saved.append(end.checkpoint())
        raise _Crash

    with pytest.raises(_Crash):
        train_stage1(cfg, train_ds, train_ds, model=_fresh_model(), runtime=Runtime(progress=False, on_epoch_end=crash_after_epoch))
    assert saved[0]["epoch"] == 0 and saved[0]["samples_seen"] == len(train_ds)
    resumed = train_stage1(cfg, train_ds, train_ds, model=_fresh_model(),
                           runtime=Runtime(progress=False, resume=saved[0], on_epoch_end=seen.append))
    assert [e.epoch for e in seen] == [1] and seen[0].samples_seen == 2 * len(train_ds)
    assert resumed.history[0]["train/loss"] == pytest.approx(s1.history[1]["train/loss"], rel=1e-4)
    assert resumed.history[0]["val/loss"] == pytest.approx(s1.history[1]["val/loss"], rel=1e-4)


def test_evaluate_checkpoint_on_test_split(forged, trained, tmp_path):
    _, _, _, _, s2 = trained
    path = save_checkpoint(s2.last_checkpoint, tmp_path / "s2")
    out = evaluate_checkpoint(path, forged, split="test", progress=False)
    test_frames = sum(r["frames"] for r in ForgedDataset(forged).records(split="test"))
    assert out["frames"] == test_frames and out["split"] == "test" and out["size"] == list(SIZE)
    assert set(out["by_method"]) == {"telea"}
    assert 0.0 <= out["pooled"]["f1"] <= 1.0
    assert out["baselines"]["all_zeros"]["pooled"]["f1"] == pytest.approx(out["empty_gt_frames"] / test_frames)
    # Further thresholds from the same predictions: 0.5 repeats the main scores, a low one flags more pixels.
    more = evaluate_checkpoint(path, forged, split="test", also_at=(0.05, 0.5), progress=False)["at_threshold"]
    assert more["0.5"]["pooled"] == out["pooled"] and more["0.5"]["frames"] == test_frames
    assert more["0.05"]["by_method"]["telea"]["frames"] == test_frames
    assert more["0.05"]["pixel_pooled"]["iou"] != out["pixel_pooled"]["iou"]
    with pytest.raises(ConfigError, match="stage 1"):
        stage1 = {**s2.last_checkpoint, "stage": 1}
        evaluate_checkpoint(save_checkpoint(stage1, tmp_path / "s1"), forged, progress=False)


def test_forge_skips_complete_videos(forged):
    before = (forged / "manifest.jsonl").read_text()
    records = forge_local(forged, [compose_video(0, 5, SIZE)], ["telea"], progress=False)
    assert records[0]["id"] == "composed-0__telea"
    assert (forged / "manifest.jsonl").read_text() == before
    stored = ForgedDataset(forged).records()
    assert {r["split"] for r in stored} == {"train", "test"}
    assert all(r["frames"] == 5 and (r["height"], r["width"]) == SIZE for r in stored)


def test_detect_with_the_trained_model_on_an_unseen_video(forged, trained, tmp_path):
    from vilocal_dist.engines.detect import detect_video
    from vilocal_dist.video.io import read_frames

    _, _, _, _, s2 = trained
    ckpt = save_checkpoint(s2.last_checkpoint, tmp_path / "s2")
    unseen = ForgedDataset(forged).records(split="test")[0]
    report = detect_video(forged / unseen["path"], ckpt, tmp_path / "det", progress=False)
    probs = read_frames(tmp_path / "det" / "probs")[..., 0]
    assert report["frames"] == unseen["frames"] == len(probs) == len(list((tmp_path / "det" / "masks").glob("*.png")))
    assert probs.shape[1:] == SIZE and probs.std() > 0  # maps that vary over the frame
    assert (tmp_path / "det" / "overlay.mp4").is_file() and (tmp_path / "det" / "report.json").is_file()
