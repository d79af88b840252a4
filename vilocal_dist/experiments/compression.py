"""ViLocal Fig. 4 and Table III: localization after re-encoding the forged test videos.

Protocol: one detector (trained on ``train_on``, the paper's VI + OP, or a given ``model``);
every forged test video is re-encoded (in memory, whole video, then decoded) and scored:

* single compression: each codec at each CRF (FFV1 is lossless: once) → Fig. 4, F1 vs CRF;
* double compression: first codec × second codec, both at ``double_crf`` (23) → Table III;
* ``none``: the lossless forged videos themselves, the reference line.

Codecs by their paper names: x264, x265 (libx264/libx265, CRF), ffv1 (lossless), mpeg4 (MPEG-4
Part 2 has no CRF: the CRF axis is mapped linearly onto its fixed quantiser 1–31, see
:func:`encoder_args`). Each condition is one Ray task; videos are handled one at a time, so a
task holds one decoded video, never the whole test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vilocal_dist.errors import ConfigError
from vilocal_dist.experiments.common import (
    COMMON_KEYS,
    SETUP_KEYS,
    Setup,
    baseline_note,
    check_keys,
    compact_scores,
    forge_dataset,
    method_list,
    pair,
    parse_setup,
    ray_map,
    train_model,
)

#: Paper name -> encoder name in vilocal_dist.video.io.
CODECS = {"x264": "libx264", "x265": "libx265", "ffv1": "ffv1", "mpeg4": "mpeg4"}
LOSSLESS = ("ffv1",)
#: libx265 (as bundled with PyAV) corrupts the heap on frames narrower than this (seen at 32x48, 64x48).
MIN_X265_SIZE = 64
COLUMNS = ["condition", "kind", "first_codec", "first_crf", "second_codec", "second_crf", "iou", "f1", "psnr_db", "frames"]

Step = tuple[str, int | None]  # (paper codec name, CRF; None for a lossless codec)


@dataclass(frozen=True)
class CompressionConfig:
    setup: Setup
    train_on: tuple[str, ...]  # methods the detector is trained on (ignored with ``model``)
    model: str  # an existing stage-2 checkpoint; "" = train one
    test_methods: tuple[str, ...]  # forged methods scored
    codecs: tuple[str, ...]
    crfs: tuple[int, ...]
    double_codecs: tuple[str, ...]
    double_crf: int
    encoder_preset: str  # x264 / x265 speed preset


def _codecs(value: Any, where: str, source: str | Path | None) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or any(v not in CODECS for v in value):
        raise ConfigError(f"{where} must be a list of codecs from {list(CODECS)}, got {value!r}", source)
    return tuple(value)


def _crf(value: Any, where: str, source: str | Path | None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 51:
        raise ConfigError(f"{where}: a CRF is an integer in 0..51, got {value!r}", source)
    return value


def validate(raw: Mapping[str, Any], source: str | Path | None) -> CompressionConfig:
    keys = ("train_on", "model", "test_methods", "codecs", "crfs", "double_codecs", "double_crf", "encoder_preset")
    check_keys(raw, COMMON_KEYS + SETUP_KEYS + keys, "", source)
    setup = parse_setup(raw, source)
    model = str(raw.get("model") or "")
    if model and not Path(model).expanduser().exists():
        raise ConfigError("model: no such checkpoint", model)
    codecs = _codecs(raw.get("codecs", list(CODECS)), "codecs", source)
    double_codecs = _codecs(raw.get("double_codecs", list(CODECS)), "double_codecs", source)
    data = setup.data
    if "x265" in codecs + double_codecs and min(data.size_h, data.size_w) < MIN_X265_SIZE:
        raise ConfigError(f"x265 needs frames of at least {MIN_X265_SIZE}x{MIN_X265_SIZE} (libx265 corrupts memory on "
                          f"narrower ones), data is {data.size_h}x{data.size_w}: raise data.size_h/size_w or drop x265",
                          source)
    crfs = raw.get("crfs") or []
    if not isinstance(crfs, (list, tuple)) or (not crfs and any(c not in LOSSLESS for c in codecs)):
        raise ConfigError(f"crfs must be a non-empty list of integers for the lossy codecs, got {crfs!r}", source)
    return CompressionConfig(
        setup=setup,
        train_on=method_list(raw.get("train_on") or list(setup.methods[:2]), "train_on", source, known=setup.methods),
        model=str(Path(model).expanduser().resolve()) if model else "",
        test_methods=method_list(raw.get("test_methods") or list(setup.methods), "test_methods", source,
                                 known=setup.methods),
        codecs=codecs,
        crfs=tuple(_crf(c, "crfs", source) for c in crfs),
        double_codecs=double_codecs,
        double_crf=_crf(raw.get("double_crf", 23), "double_crf", source),
        encoder_preset=str(raw.get("encoder_preset", "medium")),
    )


# ----------------------------------------------------------------------------- re-encoding


def encoder_args(codec: str, crf: int | None) -> tuple[str, int | None]:
    """(encoder, its quality argument) for a paper codec name at ``crf``.

    mpeg4's argument is a fixed quantiser: CRF 0..51 maps linearly onto q 1..31 (CRF 23 -> q 15),
    so one CRF axis covers all four codecs. Lossless codecs take no argument.
    """
    if codec not in CODECS:
        raise ConfigError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    if codec in LOSSLESS:
        return CODECS[codec], None
    if crf is None:
        raise ConfigError(f"codec {codec} needs a CRF")
    if codec == "mpeg4":
        return CODECS[codec], int(np.clip(round(1 + crf * 30 / 51), 1, 31))
    return CODECS[codec], int(crf)


def recompress(frames: np.ndarray, steps: Sequence[Step], *, preset: str = "medium") -> np.ndarray:
    """Encode and decode uint8 T×H×W×3 ``frames`` with each (codec, CRF) step in turn."""
    from vilocal_dist.video.io import encode_roundtrip

    for codec, crf in steps:
        encoder, arg = encoder_args(codec, crf)
        frames = encode_roundtrip(frames, encoder, arg, preset=preset)
    return frames


def conditions(config: CompressionConfig) -> list[dict[str, Any]]:
    """Every re-encoding to score: none, single (codec × CRF; lossless once), double (codec × codec)."""
    out: list[dict[str, Any]] = [{"condition": "none", "kind": "none", "steps": []}]
    for codec in config.codecs:
        crfs: Sequence[int | None] = [None] if codec in LOSSLESS else config.crfs
        for crf in crfs:
            name = codec if crf is None else f"{codec}-crf{crf}"
            out.append({"condition": name, "kind": "single", "steps": [(codec, crf)]})
    for first in config.double_codecs:
        for second in config.double_codecs:
            steps = [(c, None if c in LOSSLESS else config.double_crf) for c in (first, second)]
            out.append({"condition": f"{first}>{second}", "kind": "double", "steps": steps})
    return out


def score_condition(job: Mapping[str, Any]) -> dict[str, Any]:
    """Ray task: re-encode every test video with ``job['steps']`` and score the detector on it."""
    import torch
    from torch.utils.data import DataLoader

    from vilocal_dist.data.clips import ClipDataset
    from vilocal_dist.data.sources import load_video, open_source
    from vilocal_dist.engines.checkpoint import build_model, load_checkpoint
    from vilocal_dist.engines.evaluate import predict_probs
    from vilocal_dist.engines.metrics import MaskEvaluator
    from vilocal_dist.inpaint.metrics import psnr

    ckpt = load_checkpoint(job["checkpoint"])
    size = (int(ckpt["train_config"]["size_h"]), int(ckpt["train_config"]["size_w"]))
    device = torch.device(job["device"])
    model = build_model(ckpt, device).eval()
    evaluator = MaskEvaluator(job["threshold"])
    distortion = []
    for frames_path, masks_path, video, method in job["videos"]:
        original, masks = load_video(open_source(frames_path, mask_path=masks_path))
        frames = recompress(original, job["steps"], preset=job["preset"])
        distortion.append(np.mean([min(psnr(a, b), 100.0) for a, b in zip(frames, original)]))
        dataset = ClipDataset([(frames, masks, {"video": video, "method": method})], size=size, compress_fraction=0.0)
        for batch in DataLoader(dataset, batch_size=job["batch_size"], shuffle=False):
            probs = predict_probs(model, batch["clip"].to(device)).cpu()
            evaluator.update(probs, batch["mask"], videos=batch["video"], methods=batch["method"], frames=batch["frame"])
    return {**compact_scores(evaluator.compute()), "psnr_db": float(np.mean(distortion))}


# ----------------------------------------------------------------------------- protocol


def run(config: CompressionConfig, recorder: Any, *, workdir: Path) -> Any:
    from vilocal_dist.data.manifest import ForgedDataset
    from vilocal_dist.experiments.registry import Outcome

    setup = config.setup
    data = forge_dataset(setup.data, setup.methods, setup.method_cfgs, workdir)
    if config.model:
        checkpoint, model_tags = config.model, {"vilocal.model": config.model}
    else:
        model = train_model(setup.train, data, config.train_on, workers=setup.workers,
                            experiment=recorder.experiment, workdir=workdir)
        if not model.reused:
            recorder.adopt(model.run_ids, "detector")
        checkpoint, model_tags = str(model.checkpoint), {"vilocal.train_runs": ",".join(model.run_ids)}
    dataset = ForgedDataset(data)
    videos = [(*(None if p is None else str(p) for p in dataset.video_paths(r)), r["id"], r["method"])
              for r in dataset.records(split="test", methods=list(config.test_methods))]
    todo = conditions(config)
    jobs = [{"checkpoint": checkpoint, "videos": videos, "steps": c["steps"], "threshold": setup.eval.threshold,
             "batch_size": setup.eval.batch_size, "device": setup.eval.device, "preset": config.encoder_preset}
            for c in todo]
    scores = ray_map(score_condition, jobs, cpus=setup.eval.cpus, gpus=setup.eval.gpus, desc="re-encode + score")

    rows = []
    for cond, score in zip(todo, scores):
        steps = cond["steps"] + [(None, None)] * (2 - len(cond["steps"]))
        row = {"condition": cond["condition"], "kind": cond["kind"],
               "first_codec": steps[0][0], "first_crf": steps[0][1], "second_codec": steps[1][0],
               "second_crf": steps[1][1], "iou": score["all"]["iou"], "f1": score["all"]["f1"],
               "psnr_db": score["psnr_db"], "frames": score["all"]["frames"]}
        rows.append(row)
        metrics = {"test/f1": row["f1"], "test/iou": row["iou"], "psnr_db": row["psnr_db"]}
        for method, s in score["by_method"].items():
            metrics.update({f"test/{method}/f1": s["f1"], f"test/{method}/iou": s["iou"]})
        params = {k: row[k] for k in COLUMNS[:6]}
        recorder.child(cond["condition"], params={**params, "model": checkpoint}, metrics=metrics, tags=model_tags)
    caption = (f"IoU/F1 pooled over {rows[0]['frames']} test frames ({len(videos)} videos: "
               f"{', '.join(config.test_methods)}); detector trained on {'+'.join(config.train_on)}"
               f"{' (given model)' if config.model else ''}. mpeg4: CRF mapped to its quantiser 1-31. "
               + baseline_note(scores[0]))
    return Outcome(rows, COLUMNS, format_tables(rows, config, caption),
                   figures={"plots/f1_vs_crf.png": figure(rows, config)})


def format_tables(rows: Sequence[Mapping[str, Any]], config: CompressionConfig, caption: str = "") -> str:
    """Fig. 4 as a table (codec × CRF, plus the lossless ones) and Table III (first × second codec)."""
    by_name = {r["condition"]: r for r in rows}
    none = by_name["none"]
    header = ["codec"] + [f"CRF {c}" for c in config.crfs] + ["lossless"]
    lines = ["### Single compression (ViLocal Fig. 4): IoU/F1", "", "| " + " | ".join(header) + " |",
             "|---|" + "---:|" * (len(header) - 1), "| none (forged, lossless) |" + " |" * len(config.crfs)
             + f" {pair(none['iou'], none['f1'])} |"]
    for codec in config.codecs:
        if codec in LOSSLESS:
            r = by_name[codec]
            cells = [""] * len(config.crfs) + [pair(r["iou"], r["f1"])]
        else:
            cells = [pair(by_name[f"{codec}-crf{c}"]["iou"], by_name[f"{codec}-crf{c}"]["f1"]) for c in config.crfs] + [""]
        lines.append(f"| {codec} | " + " | ".join(cells) + " |")
    if config.double_codecs:
        lines += ["", f"### Double compression at CRF {config.double_crf} (ViLocal Table III): IoU/F1", "",
                  "| 1st \\ 2nd | " + " | ".join(config.double_codecs) + " |",
                  "|---|" + "---:|" * len(config.double_codecs)]
        for first in config.double_codecs:
            cells = [pair(by_name[f"{first}>{s}"]["iou"], by_name[f"{first}>{s}"]["f1"]) for s in config.double_codecs]
            lines.append(f"| {first} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\n" + caption if caption else "") + "\n"


def figure(rows: Sequence[Mapping[str, Any]], config: CompressionConfig) -> Any:
    """F1 and IoU against CRF, one line per lossy codec; lossless ones as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    singles = [r for r in rows if r["kind"] == "single"]
    none = next(r for r in rows if r["kind"] == "none")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, metric in zip(axes, ("f1", "iou")):
        for i, codec in enumerate(config.codecs):
            points = sorted((r["first_crf"], r[metric]) for r in singles if r["first_codec"] == codec)
            if codec in LOSSLESS:
                ax.axhline(points[0][1], color=f"C{i}", ls="--", label=f"{codec} (lossless)")
            elif points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{i}", label=codec)
        ax.axhline(none[metric], color="0.4", ls=":", label="no re-encoding")
        ax.set_xlabel("CRF")
        ax.set_ylabel(f"{'F1' if metric == 'f1' else 'IoU'} (mean per frame)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Robustness to compression (ViLocal Fig. 4)")
    fig.tight_layout()
    return fig
