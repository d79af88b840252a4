"""The bad-input corpus (issue #8): bad files, mismatched masks, bad configs and bad weights,
each through a real entry point.

A CLI case runs ``vilocal …`` in-process and checks the contract of ``errors.py``: exit code 2,
exactly one line ``vilocal: error: <file or key>: <problem>`` on stderr (no traceback), and nothing
under the output folder that looks complete (report.json, result.json, manifest.jsonl, published
frames/masks/probs folders, overlay or preview videos). Ray never starts: ``init_ray`` is a
tripwire, so a command that validates only after starting Ray fails here. Library cases cover what
has no command line (losses, inpainting methods, clip datasets) and the *defined* behaviours:
short videos are reflected, empty masks are a no-op for a method and an error for the CLI.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vilocal_dist.cli.main import main
from vilocal_dist.data.clips import ClipDataset
from vilocal_dist.data.composed import compose_video
from vilocal_dist.data.manifest import write_forged_video
from vilocal_dist.engines.checkpoint import checkpoint_dict, save_checkpoint
from vilocal_dist.engines.config import TrainConfig
from vilocal_dist.engines.datasets import training_datasets
from vilocal_dist.errors import InputError
from vilocal_dist.inpaint.registry import get_method
from vilocal_dist.losses import focal_loss, pixel_contrastive_loss
from vilocal_dist.models import create_model
from vilocal_dist.paths import spec_dir
from vilocal_dist.video.io import write_png_folder, write_video

T, H, W = 8, 32, 48
#: Names that mark an output folder as (partly) complete; none may exist after a failed command.
COMPLETE = {"report.json", "result.json", "manifest.jsonl", "frames", "masks", "probs", "overlay.mp4",
            "result.mp4", "result.mkv", ".tmp"}
#: Method options that keep the learnt inpainting methods to a few iterations.
TINY = {"iivi": {"preset": "tiny", "iters_recon": 2, "iters_reg": 0}, "intervi": {"preset": "tiny", "iterations": 2}}
METHODS = ["telea", "ns", "flowprop", "iivi", "intervi"]


def _huge_png(path: Path, width: int = 9000, height: int = 16) -> None:
    """A PNG whose header declares width × height (the pixel data stays 16×16: never decoded)."""
    ok, data = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(data.tobytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC of "IHDR" + its 13 bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def _forged(root: Path, videos: dict[str, tuple[str, np.ndarray, np.ndarray]]) -> Path:
    for name, (split, frames, masks) in videos.items():
        record = {"source_video": name, "source": "composed", "method": "telea", "split": split, "config": {}, "seed": 0}
        write_forged_video(root, record, frames, masks)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every bad input, built once: files named as the case table below refers to them."""
    c = tmp_path_factory.mktemp("corpus")
    video = compose_video(1, T, (H, W))
    frames, masks = video.frames, video.masks
    write_png_folder(c / "frames", frames)
    write_png_folder(c / "masks", masks)
    # --- video files
    mp4 = write_video(c / "good.mp4", frames, codec="libx264")
    mkv = write_video(c / "good.mkv", frames)
    (c / "trunc.mp4").write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])  # index (moov) cut off
    (c / "trunc.mkv").write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])  # fewer frames than its duration
    (c / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (c / "empty.mp4").write_bytes(b"")
    (c / "text.mp4").write_text("not a video\n" * 50)
    (c / "huge.y4m").write_bytes(b"YUV4MPEG2 W9000 H16 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(9000 * 16 * 3 // 2))
    _huge_png(c / "huge_png" / "00000.png")
    shutil.copytree(c / "frames", c / "badframe")
    (c / "badframe" / "00005.png").write_bytes(b"garbage")  # the header probe reads 00000 only: fails midway
    # --- masks that do not fit the frames
    write_png_folder(c / "masks_7", masks[:7])
    write_video(c / "masks_7.mkv", np.repeat(masks[:7, ..., None], 3, axis=3).astype(np.uint8) * 255)
    write_png_folder(c / "masks_small", np.stack([cv2.resize(m.astype(np.uint8), (24, 16)) > 0 for m in masks]))
    shutil.copytree(c / "masks", c / "masks_odd")
    cv2.imwrite(str(c / "masks_odd" / "00003.png"), np.zeros((16, 24), np.uint8))
    write_png_folder(c / "masks_empty", np.zeros_like(masks))
    write_png_folder(c / "masks_full", np.ones_like(masks))
    # --- short videos and forged datasets
    write_png_folder(c / "short2", frames[:2])
    short = ("train", frames[:1], masks[:1])  # a 1-frame video
    _forged(c / "forged", {"a": ("train", frames, masks), "b": ("test", frames, masks), "c": short})
    for name in ("forged_nomasks", "forged_lostmask"):
        shutil.copytree(c / "forged", c / name)
    shutil.rmtree(c / "forged_nomasks" / "videos" / "b__telea" / "masks")
    (c / "forged_lostmask" / "videos" / "b__telea" / "masks" / "00007.png").unlink()
    # --- checkpoints
    cfg = TrainConfig(model="vilocal_tiny", size_h=H, size_w=W)
    ckpt = checkpoint_dict(create_model("vilocal_tiny"), model_name="vilocal_tiny", stage=2, epoch=0,
                           samples_seen=0, train_config=cfg.to_dict(), metrics={})
    good = save_checkpoint(ckpt, c / "ckpt")
    save_checkpoint({**ckpt, "stage": 1}, c / "stage1.pt")
    save_checkpoint({k: v for k, v in ckpt.items() if k != "stage"}, c / "nostage.pt")
    save_checkpoint({**ckpt, "train_config": {}}, c / "notrain.pt")
    save_checkpoint({**ckpt, "model_config": {**ckpt["model_config"], "bogus": 1}}, c / "badcfg.pt")
    narrowed = {k: v[..., :1] if v.ndim else v for k, v in ckpt["model_state"].items()}
    save_checkpoint({**ckpt, "model_state": narrowed}, c / "shapes.pt")
    torch.save(ckpt["model_state"], c / "statedict.pt")
    (c / "random.pt").write_bytes(b"\x80\x04garbage" * 30)
    (c / "empty.pt").write_bytes(b"")
    (c / "trunc.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (c / "emptydir").mkdir()
    # --- VGG weights
    (c / "vgg_garbage.pth").write_bytes(b"garbage" * 10)
    torch.save(ckpt["model_state"], c / "vgg_foreign.pth")
    # --- configs
    (c / "bad.yaml").write_text("tau: [0.1\n")
    (c / "unknown.yaml").write_text("taux: 0.1\n")
    (c / "list.yaml").write_text("- 1\n- 2\n")
    (c / "tau0.yaml").write_text("tau: 0\n")
    (c / "exp_unknown.yaml").write_text("bogus: 1\n")
    (c / "exp_tau.yaml").write_text("train: {tau: -1}\n")
    return c


class RayStarted(Exception):
    """Raised where Ray would start: the command did not validate its input first."""


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Ray must not start (validation comes first); runs, if any, would land under tmp_path."""
    import vilocal_dist.distributed.forge as forge
    import vilocal_dist.distributed.train as train
    import vilocal_dist.distributed.tuning as tuning

    def tripwire(*args, **kwargs):
        raise RayStarted("Ray started before the input was validated")

    monkeypatch.setattr(tuning, "init_ray", tripwire)
    monkeypatch.setattr(forge, "init_ray", tripwire, raising=False)  # its own import of the name
    monkeypatch.setattr(train, "init_ray", tripwire, raising=False)  # imported here first: restored after
    monkeypatch.setenv("VILOCAL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VILOCAL_VGG19_WEIGHTS", raising=False)
    monkeypatch.delenv("VILOCAL_VGG16_WEIGHTS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


# ----------------------------------------------------------------------------- the CLI corpus
# Each case: a command line (leading NAME=value words set environment variables) and the expected
# message fragment. {C} is the corpus folder, {OUT} a fresh output folder, {CKPT} a good stage-2
# checkpoint, {HOME} $VILOCAL_HOME, {CONTRASTIVE} / {FOCAL} / {REGULARIZERS} the shipped sweep specs.

def case(case_id: str, command: str, message: str, **kwargs) -> object:
    return pytest.param(command, message, id=case_id, **kwargs)


BAD_VIDEOS = [
    ("{C}/trunc.mp4", "{C}/trunc.mp4: unreadable or corrupt video"),
    ("{C}/trunc.mkv", "{C}/trunc.mkv: truncated video: 3 frames present, its duration implies about 8"),
    ("{C}/corrupt.mp4", "{C}/corrupt.mp4: unreadable or corrupt video"),
    ("{C}/empty.mp4", "{C}/empty.mp4: empty file (0 bytes)"),
    ("{C}/text.mp4", "{C}/text.mp4: unreadable or corrupt video"),
    ("{C}/huge.y4m", "{C}/huge.y4m: frame size 9000x16 exceeds the limit"),
    ("{C}/huge_png", "{C}/huge_png/00000.png: frame size 9000x16 exceeds the limit"),
    ("{C}/missing.mp4", "{C}/missing.mp4: no such file or folder"),
]
VIDEO_READERS = {
    "inspect": "data inspect {V}",
    "detect": "detect {V} --model {CKPT} --out {OUT}",
    "inpaint": "inpaint {V} --mask {C}/masks --out {OUT} --method telea --quiet",
    "forge": "forge --sources {V} --methods telea --out {OUT}",
}
VIDEO_CASES = [
    case(f"video-{reader}-{Path(video).name}", command.replace("{V}", video), message)
    for video, message in BAD_VIDEOS
    for reader, command in VIDEO_READERS.items()
] + [
    case("video-detect-frame-corrupt-midway", "detect {C}/badframe --model {CKPT} --out {OUT}",
         "{C}/badframe/00005.png: unreadable image"),
    case("video-inspect-frame-corrupt-midway", "data inspect {C}/badframe", "{C}/badframe/00005.png: unreadable image"),
]

INPAINT = "inpaint {C}/frames --out {OUT} --quiet"
MASK_CASES = [
    case(f"mask-{command.split()[0]}-{mask}", command.replace("{M}", mask), message)
    for mask, message in [
        ("masks_7", "{C}/masks_7: 7 masks for 8 frames (none for 00007)"),
        ("masks_7.mkv", "{C}/masks_7.mkv: 7 masks for 8 frames"),
        ("masks_small", "{C}/masks_small/00000.png: mask size 24x16 differs from the frame size 48x32"),
        ("masks_odd", "{C}/masks_odd/00003.png: mask size 24x16 differs from the frame size 48x32"),
    ]
    for command in ("data inspect {C}/frames --mask-path {C}/{M}", INPAINT + " --method telea --mask {C}/{M}")
] + [
    case("mask-inpaint-empty", INPAINT + " --method telea --mask {C}/masks_empty",
         "{C}/masks_empty: every mask is empty: nothing to inpaint"),
    case("mask-inpaint-all-ones", INPAINT + " --method flowprop --mask {C}/masks_full",
         "{C}/masks_full: every pixel of every frame is masked"),
    case("mask-inpaint-single-image-size", INPAINT + " --mask {C}/masks_small/00000.png --mask-frame 0",
         "{C}/masks_small/00000.png: mask size 24x16 differs"),
]

TRAIN = "train --data {C}/forged --run-name bad"
CONFIG_CASES = [
    case(f"train-config-{name}", f"{TRAIN} --config {{C}}/{name}", message)
    for name, message in [
        ("bad.yaml", "{C}/bad.yaml: invalid YAML"),
        ("unknown.yaml", "{C}/unknown.yaml: taux: unknown training config key (did you mean 'tau'?)"),
        ("list.yaml", "{C}/list.yaml: a training config must be a mapping"),
        ("missing.yaml", "{C}/missing.yaml: cannot read training config"),
        ("tau0.yaml", "{C}/tau0.yaml: tau must be > 0, got 0.0"),
    ]
] + [
    case(f"train-set-{item}", f"{TRAIN} --set {item}", message)
    for item, message in [
        ("tau=0", "tau must be > 0, got 0.0"),
        ("tau=-1", "tau must be > 0, got -1.0"),
        ("alpha=1.5", "alpha must be in [0, 1], got 1.5"),
        ("alpha=-0.1", "alpha must be in [0, 1], got -0.1"),
        ("gamma=-1", "gamma must be >= 0, got -1.0"),
        ("stage1_lr=-1", "stage1_lr must be > 0"),
        ("tau=abc", "tau must be float, got 'abc'"),
        ("tau=[1", "--set 'tau=[1': cannot parse value"),
        ("tau", "--set expects key=value, got 'tau'"),
        ("bogus=1", "bogus: unknown training config key"),
    ]
] + [
    case(f"sweep-{case_id}", f"sweep {spec} {extra}".strip(), message)
    for case_id, spec, extra, message in [
        ("malformed", "{C}/bad.yaml", "", "{C}/bad.yaml: invalid YAML"),
        ("missing", "{C}/missing.yaml", "", "{C}/missing.yaml: cannot read sweep spec"),
        ("unknown-key", "{CONTRASTIVE}", "--set bogus=1", "{CONTRASTIVE}: bogus: unknown key"),
        ("tau-range", "{CONTRASTIVE}", "--set search_space.tau.low=0", "search_space.tau.low: loguniform needs low > 0"),
        ("tau-base", "{CONTRASTIVE}", "--set base.tau=-1", "{CONTRASTIVE}: base: tau must be > 0"),
        ("alpha-range", "{FOCAL}", "--set search_space.alpha.high=1.5",
         "search_space.alpha: uniform range includes an illegal value 1.5: alpha must be in [0, 1]"),
        ("gamma-range", "{FOCAL}", "--set search_space.gamma.low=-1",
         "search_space.gamma: uniform range includes an illegal value -1.0: gamma must be >= 0"),
        ("base-unknown", "{FOCAL}", "--set base.taux=1", "base: taux: unknown training config key (did you mean 'tau'?)"),
        ("lambda-range", "{REGULARIZERS}", "--set search_space.lambda_a.low=-0.1",
         "search_space.lambda_a.low: loguniform needs low > 0"),
        ("lambda-base", "{REGULARIZERS}", "--set base.lambda_s=-1", "base: iivi: lambda_a, lambda_s must be ≥ 0"),
        ("no-data", "{CONTRASTIVE}", "--set data.root=nowhere",
         "{HOME}/nowhere: sweep 'vilocal-contrastive': data.root holds no complete training videos"),
        ("no-encoder", "{FOCAL}", "--set data.root={C}/forged --set data.encoder={C}/emptydir",
         "{C}/emptydir/model.pt: checkpoint not found"),
    ]
] + [
    case(f"experiment-{case_id}", f"experiment {name} {extra}", message)
    for case_id, name, extra, message in [
        ("malformed", "ablation-tiny", "--config {C}/bad.yaml", "{C}/bad.yaml: invalid YAML"),
        ("unknown-key", "ablation-tiny", "--config {C}/exp_unknown.yaml", "{C}/exp_unknown.yaml: bogus: unknown key"),
        ("tau", "ablation-tiny", "--config {C}/exp_tau.yaml", "{C}/exp_tau.yaml: train: tau must be > 0, got -1.0"),
        ("alpha", "generalization-tiny", "--set train.alpha=3", "train: alpha must be in [0, 1], got 3.0"),
        ("gamma", "compression-tiny", "--set train.gamma=-2", "train: gamma must be >= 0, got -2.0"),
        ("test-fraction", "ablation-tiny", "--set data.test_fraction=2", "data.test_fraction must be in (0, 1), got 2.0"),
        ("unknown-section", "ablation-tiny", "--set trainx.alpha=0.3", "trainx: unknown key (did you mean 'train'?)"),
        ("method-option", "ablation-tiny", "--set method_cfgs.telea.radius=0",
         "method_cfgs.telea: telea: radius must be >= 1, got 0"),
    ]
] + [
    case(f"inpaint-set-{method}-{item}", f"{INPAINT} --mask {{C}}/masks --method {method} --set {item}", message)
    for method, item, message in [
        ("iivi", "lambda_a=-1", "iivi: lambda_a, lambda_s must be ≥ 0"),
        ("iivi", "lambda_s=-0.5", "iivi: lambda_a, lambda_s must be ≥ 0"),
        ("iivi", "bogus=1", "iivi: unknown option(s) ['bogus']"),
        ("iivi", "iters_recon=abc", "iivi: option iters_recon expects int, got 'abc'"),
        ("intervi", "lr=-1", "intervi: iterations must be >= 0 and lr > 0"),
        ("intervi", "preset=huge", "intervi: unknown preset 'huge'"),
        ("telea", "radius=abc", "telea: option radius expects int, got 'abc'"),
        ("telea", "radius=0", "telea: radius must be >= 1, got 0"),
        ("flowprop", "dis_preset=slow", "flowprop: dis_preset must be one of ['fast', 'medium', 'ultrafast'], got 'slow'"),
    ]
] + [
    case(f"forge-set-{item}", f"forge --composed 2 --frames 5 --size 32x48 --methods telea,iivi --out {{OUT}} --set {item}",
         message)
    for item, message in [
        ("telea.radius=0", "telea: radius must be >= 1, got 0"),
        ("iivi.lambda_a=-1", "iivi: lambda_a, lambda_s must be ≥ 0"),
    ]
]

IIVI = INPAINT + " --mask {C}/masks --method iivi --set preset=tiny --set iters_recon=1 --set iters_reg=1"
INTERVI = INPAINT + " --mask {C}/masks --method intervi --set preset=tiny --set iterations=1"
WEIGHT_CASES = [
    case("vgg-none", IIVI, "no vgg19 weights: give a local torchvision-layout state dict"),
    case("vgg-missing", IIVI + " --set vgg_weights={C}/missing.pth", "{C}/missing.pth: vgg19 weights file not found"),
    case("vgg-env-missing", "VILOCAL_VGG19_WEIGHTS={C}/missing.pth " + IIVI,
         "{C}/missing.pth: vgg19 weights file not found"),
    case("vgg-garbage", IIVI + " --set vgg_weights={C}/vgg_garbage.pth",
         "{C}/vgg_garbage.pth: cannot read vgg19 weights: not a torch file of plain tensors"),
    case("vgg-foreign", IIVI + " --set vgg_weights={C}/vgg_foreign.pth",
         "{C}/vgg_foreign.pth: not a torchvision vgg19 state dict"),
    case("vgg16-garbage", INTERVI + " --set vgg_weights={C}/vgg_garbage.pth", "{C}/vgg_garbage.pth: cannot read vgg16 weights"),
] + [
    case(f"checkpoint-{command.split()[0]}-{name}", command.replace("{K}", f"{{C}}/{name}"), message)
    for name, message in [
        ("random.pt", "{C}/random.pt: not a readable checkpoint"),
        ("empty.pt", "{C}/empty.pt: not a readable checkpoint"),
        ("trunc.pt", "{C}/trunc.pt: not a readable checkpoint"),
        ("statedict.pt", "{C}/statedict.pt: not a vilocal checkpoint"),
        ("stage1.pt", "{C}/stage1.pt: checkpoint is from stage 1"),
        ("nostage.pt", "{C}/nostage.pt: incomplete vilocal checkpoint: no stage"),
        ("notrain.pt", "{C}/notrain.pt: incomplete vilocal checkpoint: no train_config.size_h/size_w"),
        ("badcfg.pt", "{C}/badcfg.pt: unknown ViLocal config field 'bogus'"),
        ("shapes.pt", "{C}/shapes.pt: checkpoint weights do not fit this version's vilocal_tiny network"),
        ("emptydir", "{C}/emptydir/model.pt: checkpoint not found"),
    ]
    for command in ("detect {C}/frames --model {K} --out {OUT}", "evaluate --model {K} --data {C}/forged")
] + [
    case(f"evaluate-data-{data}", f"evaluate --model {{CKPT}} --data {{C}}/{data}", message)
    for data, message in [
        ("nowhere", "{C}/nowhere: no complete videos in split 'test'"),
        ("forged_nomasks", "{C}/forged_nomasks/videos/b__telea/frames: no masks for this video"),
        ("forged_lostmask", "{C}/forged_lostmask/videos/b__telea/masks: 7 masks for 8 frames (none for 00007)"),
    ]
]

# Checked before Ray starts (these used to start Ray first).
FORGE = "forge --composed 1 --frames 5 --size 32x48 --methods telea"
EARLY_CHECKS = [
    case("train-data-missing", "train --data {C}/nowhere --set model=vilocal_tiny",
         "{C}/nowhere: no complete videos in the train split"),
    case("forge-source-without-masks", "forge --sources {C}/frames --methods telea --out {OUT}",
         "{C}/frames: no masks for this video: inpainting needs the masked regions"),
    case("forge-source-missing", "forge --sources {C}/nowhere --methods telea --out {OUT}",
         "{C}/nowhere: no such file or folder"),
    case("forge-out-is-a-file", FORGE + " --out {C}/good.mp4", "{C}/good.mp4: --out names an existing file, not a folder"),
    case("forge-out-below-a-file", FORGE + " --out {C}/good.mp4/forged", "--out: {C}/good.mp4 is a file"),
    case("forge-out-unknown-scheme", FORGE + " --out ftp://host/forged", "--out ftp://host/forged: unknown storage scheme 'ftp'"),
    case("inpaint-out-is-a-file", INPAINT.replace("{OUT}", "{C}/good.mp4") + " --mask {C}/masks --method telea",
         "{C}/good.mp4: --out names an existing file, not a folder"),
    case("train-encoder-missing", "train --stage 2 --data {C}/forged --encoder {C}/nowhere --set model=vilocal_tiny",
         "{C}/nowhere: --encoder: checkpoint not found"),
    case("train-data-unknown-scheme", "train --data ftp://host/forged --set model=vilocal_tiny",
         "--data ftp://host/forged: unknown storage scheme 'ftp'"),
    case("train-gpus-per-worker", "train --data {C}/forged --gpus-per-worker 0 --set model=vilocal_tiny",
         "--gpus-per-worker must be > 0, got 0"),
    case("sweep-sources-without-masks", "sweep {REGULARIZERS} --set data.sources=[{C}/frames]",
         "{C}/frames: no masks for this video"),
    case("sweep-gpus-per-trial-on-training-sweep", "sweep {FOCAL} --gpus-per-trial 0.5",
         "--gpus-per-trial applies to inpaint-regularizers sweeps"),
    case("sweep-unknown-spec-name", "sweep no-such-sweep", "no-such-sweep: no such spec file, and no shipped spec"),
    case("experiment-inpaint-quality-method-option", "experiment inpaint-quality-tiny --set method_cfgs.iivi.lambda_a=-1",
         "iivi: lambda_a, lambda_s must be ≥ 0"),
]


def run_cli(
    command: str, paths: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, list[str]]:
    """``vilocal COMMAND`` in-process: (exit code, stderr lines). Leading NAME=value words are
    environment variables."""
    words = [w.format(**paths) for w in shlex.split(command)]
    while words and "=" in words[0] and words[0].split("=")[0].isupper():
        name, value = words.pop(0).split("=", 1)
        monkeypatch.setenv(name, value)
    code = main(words)
    return code, capsys.readouterr().err.rstrip().splitlines()


@pytest.fixture
def paths(corpus: Path, tmp_path: Path) -> dict[str, Path]:
    sweeps = spec_dir()
    return {"C": corpus, "OUT": tmp_path / "out", "CKPT": corpus / "ckpt" / "model.pt", "HOME": tmp_path / "home",
            "CONTRASTIVE": sweeps / "vilocal-contrastive.yaml", "FOCAL": sweeps / "vilocal-focal.yaml",
            "REGULARIZERS": sweeps / "inpaint-regularizers.yaml"}


@pytest.mark.parametrize("command, message", VIDEO_CASES + MASK_CASES + CONFIG_CASES + WEIGHT_CASES + EARLY_CHECKS)
def test_bad_input_is_one_line_exit_2_and_nothing_complete(command, message, paths, monkeypatch, capsys):
    code, lines = run_cli(command, paths, monkeypatch, capsys)
    assert code == 2, lines
    # One line, and the last (progress bars may come before it): a wrapped message would break it.
    assert [line for line in lines if line.startswith("vilocal:")] == lines[-1:], lines
    assert lines[-1].startswith("vilocal: error: ") and message.format(**paths) in lines[-1]
    out = paths["OUT"]
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name in COMPLETE) if out.exists() else []
    assert not left, f"a failed command left {left}"


def test_failed_rerun_unpublishes_the_old_detection(paths, monkeypatch, capsys):
    """A complete earlier detection in DIR loses report.json when a rerun fails; no .tmp stays."""
    out = paths["OUT"]
    assert run_cli("detect {C}/frames --model {CKPT} --out {OUT}", paths, monkeypatch, capsys)[0] == 0
    assert (out / "report.json").is_file()
    code, lines = run_cli("detect {C}/badframe --model {CKPT} --out {OUT}", paths, monkeypatch, capsys)
    assert code == 2 and "00005.png: unreadable image" in lines[-1]
    assert not (out / "report.json").exists() and not (out / ".tmp").exists()


def test_failed_rerun_unpublishes_the_old_inpainting(paths, monkeypatch, capsys):
    """An inpainting rerun that fails while replacing the outputs leaves no result.json behind."""
    out = paths["OUT"]
    command = INPAINT + " --mask {C}/masks --method telea --preview none"
    assert run_cli(command, paths, monkeypatch, capsys)[0] == 0 and (out / "result.json").is_file()

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("vilocal_dist.cli.inpaint.write_png_folder", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_cli(command, paths, monkeypatch, capsys)
    assert not (out / "result.json").exists()


def test_relative_sources_reach_the_trials_as_absolute_paths(corpus, paths, monkeypatch, capsys):
    """Trials run in another folder (on another node): the driver resolves relative sources
    against the caller's folder, and checks them, before handing them over."""
    import vilocal_dist.distributed.forge as forge

    planned = []

    def capture(jobs, opts, **kwargs):
        planned.extend(jobs)
        raise RayStarted("stop after planning")

    monkeypatch.setattr(forge, "forge", capture)
    monkeypatch.chdir(corpus / "forged" / "videos")
    with pytest.raises(RayStarted):
        main(["forge", "--sources", "a__telea", "--methods", "telea", "--out", "rel-out"])
    assert [j["source"] for j in planned] == [str(corpus / "forged" / "videos" / "a__telea" / "frames")]
    assert not (corpus / "forged" / "videos" / "rel-out").exists()


# ----------------------------------------------------------------------------- defined behaviours


def test_short_video_is_detected_with_reflected_windows(paths, monkeypatch, capsys, caplog):
    """Fewer frames than one 5-frame clip is not an error: every frame is still scored, with a warning."""
    with caplog.at_level(logging.WARNING, logger="vilocal_dist.engines.detect"):
        code, _ = run_cli("detect {C}/short2 --model {CKPT} --out {OUT}", paths, monkeypatch, capsys)
    assert code == 0
    report = json.loads((paths["OUT"] / "report.json").read_text())
    assert report["frames"] == 2 and len(list((paths["OUT"] / "probs").glob("*.png"))) == 2
    assert "2 frames, fewer than one 5-frame clip" in caplog.text


def test_short_forged_video_trains_on_reflected_clips(corpus, caplog):
    """A 1-frame forged video gives one clip of five copies of its frame (and a warning)."""
    cfg = TrainConfig(model="vilocal_tiny", size_h=H, size_w=W, compress_fraction=0.0, val_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="vilocal_dist.data.clips"):
        train, val, summary = training_datasets(corpus / "forged", cfg)
    assert "shorter than a 5-frame clip (c__telea)" in caplog.text
    short = val if "c__telea" in summary["val_videos"] else train
    item = next(short[i] for i in range(len(short)) if short[i]["video"] == "c__telea")
    clip = item["clip"]  # [3, 5, H, W]
    assert clip.shape == (3, 5, H, W) and all(torch.equal(clip[:, 0], clip[:, k]) for k in range(5))


def test_clip_dataset_mask_count_mismatch_names_the_masks(corpus):
    dataset = ClipDataset([(corpus / "frames", corpus / "masks_7", {"video": "v"})], size=(H, W), compress_fraction=0.0)
    with pytest.raises(InputError, match=r"masks_7: 7 masks for 8 frames"):
        dataset[0]


@pytest.mark.parametrize("fill", [False, True], ids=["empty-mask", "all-ones-mask"])
def test_losses_stay_finite_on_degenerate_masks(fill):
    """Nothing forged or everything forged: both losses finite, gradients finite (no NaN)."""
    features = torch.randn(2, 8, 4, 6, requires_grad=True)
    masks = torch.full((2, 16, 24), fill)
    out = pixel_contrastive_loss(features, masks, temperature=0.1)
    out["loss"].backward()
    assert out["loss"].item() == 0.0 and out["n_valid"] == 0  # no pristine/forged pair to contrast
    assert torch.isfinite(features.grad).all()
    logits = torch.tensor([[-30.0, 0.0], [5.0, 30.0]], requires_grad=True)
    loss = focal_loss(logits, torch.full((2, 2), fill), alpha=0.5, gamma=2.0)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("method", METHODS)
def test_empty_masks_are_a_no_op_for_every_method(method):
    video = compose_video(2, 3, (H, W))
    result = get_method(method)(video.frames, np.zeros((3, H, W), bool), TINY.get(method), progress=False)
    np.testing.assert_array_equal(result.frames, video.frames)


@pytest.mark.parametrize("method", METHODS)
def test_all_ones_masks_are_refused_by_every_method(method):
    """Nothing known: OpenCV would return the frames unchanged and the learnt methods fit nothing."""
    video = compose_video(2, 3, (H, W))
    with pytest.raises(InputError, match="every pixel of every frame is masked"):
        get_method(method)(video.frames, np.ones((3, H, W), bool), TINY.get(method), progress=False)


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_per_frame_methods_refuse_a_fully_masked_frame(method):
    video = compose_video(2, 3, (H, W))
    masks = video.masks.copy()
    masks[1] = True
    with pytest.raises(InputError, match="frame 1 is masked entirely"):
        get_method(method)(video.frames, masks, progress=False)
