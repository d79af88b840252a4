"""IIVI Table 1: inpainting quality with fixed masks and with object masks, per method.

Two protocols, each with a ground truth (scored by ``inpaint.metrics.quality_metrics`` on the
composited output: PSNR, SSIM, their hole-only versions, and InterVI's temporal consistency):

* fixed masks: clean videos (DAVIS sequences, video files, or composed backgrounds) with a
  centred rectangle of ¼ width × ¼ height removed from every frame; ground truth = the video;
* object masks: composed videos (real photographs, moving camera, objects gliding over them);
  the objects are removed, ground truth = the clean camera view.

Both are written once as one DAVIS-layout folder (``JPEGImages`` = method input with the hole
blanked, ``Annotations`` = masks, ``Backgrounds`` = ground truth), then every condition (a method
and its options, e.g. IIVI without the anti-ambiguity loss) is run over it through the forge
fan-out: one Tune trial per (video, condition). Conditions sharing a method get separate forge
folders (a forged video is named by source and method). Scoring is one Ray task per condition.

Beside the quality, the table gives each method's wall time and iterations per video, and the
run keeps the internal methods' learning curves (``plots/curves.png``, ``curves.json``; each
forged video's MLflow run has them as stepped ``curve/*`` metrics): hole PSNR against the ground
truth and the self-validation PSNR the stopping rule watches. IIVI's regulariser ablations share
each video's phase 1 (``recon_cache``), so they differ only where they should.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.experiments.common import (
    COMMON_KEYS,
    check_keys,
    check_method_cfg,
    config_hash,
    from_mapping,
    method_list,
    ray_map,
    resolve_sources,
    write_text_atomic,
)

COLUMNS = ["condition", "method", "type", "protocol", "psnr", "ssim", "psnr_hole", "ssim_hole", "tc", "seconds",
           "iterations", "converged", "videos"]
PROTOCOLS = ("fixed", "object")
METRICS = ("psnr", "ssim", "psnr_hole", "ssim_hole", "tc")
COSTS = ("seconds", "iterations", "converged")  # per video: wall time, iterations, 1 if the stopping rule ended it
CONDITION_KEYS = ("name", "method", "type", "cfg")


def converged(record: Mapping[str, Any]) -> float:
    """1.0 when every phase of an internal fit ended on its stopping rule's plateau, 0.0 when one
    ran into its maximum (it may not have converged), NaN for methods without iterations."""
    cfg, metrics = record.get("config") or {}, record.get("metrics") or {}
    if "train/iters_recon" in metrics and "iters_recon" in cfg:  # IIVI: two phases
        recon, total = metrics["train/iters_recon"], metrics["train/iters"]
        ok = (cfg["iters_recon"] == 0 or recon < cfg["iters_recon"]) and (cfg["iters_reg"] == 0 or total - recon < cfg["iters_reg"])
        return float(ok)
    if "train/updates" in metrics and "iterations" in cfg:  # InterVI
        return float(metrics["train/updates"] < cfg["iterations"])
    return math.nan


@dataclass(frozen=True)
class QualityData:
    """The test videos of both protocols (``data:`` section)."""

    fixed_sources: tuple[str, ...] = ()  # "davis" (the shared DAVIS root), DAVIS roots, sequence folders, videos
    fixed_composed: int = 0  # plus N composed clean videos (the backgrounds) with the fixed mask
    object_composed: int = 4  # composed videos whose objects are removed
    frames: int = 24  # frames per composed video; at most this many of every source
    size_h: int = 240
    size_w: int = 432
    seed: int = 0  # first composed seed
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0
    retries: int = 1


@dataclass(frozen=True)
class Condition:
    name: str
    method: str
    type: str  # internal / flow-based / classical (the table's "Type" column)
    cfg: Mapping[str, Any]  # method options (over method_cfgs[method])


@dataclass(frozen=True)
class QualityConfig:
    data: QualityData
    conditions: tuple[Condition, ...]
    eval_cpus: float


def validate(raw: Mapping[str, Any], source: str | Path | None) -> QualityConfig:
    check_keys(raw, COMMON_KEYS + ("data", "method_cfgs", "conditions", "eval_cpus"), "", source)
    data = from_mapping(QualityData, raw.get("data"), "data", source)
    if data.frames < 2 or data.size_h < 16 or data.size_w < 16:
        raise ConfigError("data: at least 2 frames of 16×16 are needed (temporal consistency compares frames)", source)
    if not (data.fixed_sources or data.fixed_composed or data.object_composed):
        raise ConfigError("data: give fixed_sources, fixed_composed and/or object_composed", source)
    base = raw.get("method_cfgs") or {}
    items = raw.get("conditions")
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError("conditions must be a non-empty list of {name, method, type, cfg}", source)
    conditions = []
    for i, d in enumerate(items):
        d = check_keys(d, CONDITION_KEYS, f"conditions[{i}]", source)
        method = method_list([d.get("method", d.get("name"))], f"conditions[{i}].method", source)[0]
        cfg = check_method_cfg(method, {**(base.get(method) or {}), **(d.get("cfg") or {})},
                               f"conditions[{i}].cfg", source)
        conditions.append(Condition(str(d.get("name", method)), method, str(d.get("type", "")), cfg))
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ConfigError(f"condition names must differ, got {names}", source)
    cpus = raw.get("eval_cpus", 1)
    if not isinstance(cpus, (int, float)) or cpus <= 0:
        raise ConfigError(f"eval_cpus must be > 0, got {cpus!r}", source)
    return QualityConfig(data, tuple(conditions), float(cpus))


# ----------------------------------------------------------------------------- test videos


def _clean_videos(spec: str, size: tuple[int, int], frames: int) -> Iterator[tuple[str, np.ndarray]]:
    """(name, uint8 T×H×W×3) of every video behind a fixed-mask source spec."""
    from vilocal_dist.data.sources import is_davis_root, list_sequences, load_video, open_source

    path = Path(resolve_sources([spec])[0]).expanduser()
    if not path.exists():
        raise InputError("fixed-mask source not found" + (" (set VILOCAL_DAVIS_ROOT)" if spec == "davis" else ""), path)
    sources = [open_source(path, seq=s) for s in list_sequences(path)] if is_davis_root(path) else [open_source(path)]
    for src in sources:
        video, _ = load_video(src, size, frames, require_masks=False)
        yield src.name, video


def protocol_videos(data: QualityData) -> Iterator[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]]:
    """(protocol, name, input frames with the hole blanked, masks, ground truth) of every test video."""
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.inpaint.metrics import fixed_masks

    size = (data.size_h, data.size_w)
    clean = [item for spec in data.fixed_sources for item in _clean_videos(spec, size, data.frames)]
    clean += [(f"composed-{data.seed + i}", compose_video(data.seed + i, data.frames, size).backgrounds)
              for i in range(data.fixed_composed)]
    for name, gt in clean:
        masks = fixed_masks(*gt.shape[:3])
        yield "fixed", f"fixed-{name}", np.where(masks[..., None], np.uint8(0), gt), masks, gt
    for i in range(data.object_composed):
        video = compose_video(data.seed + 1000 + i, data.frames, size)  # other seeds than the fixed ones
        yield "object", f"object-composed-{data.seed + 1000 + i}", np.where(video.masks[..., None], np.uint8(0), video.frames), video.masks, video.backgrounds


def write_test_videos(data: QualityData, root: Path) -> dict[str, str]:
    """Write the test videos in DAVIS layout under ``root`` (kept if already complete); returns
    {video name: protocol}."""
    from vilocal_dist.video.io import write_png_folder

    index_file = root / "protocols.json"
    if index_file.is_file():
        return json.loads(index_file.read_text())
    protocols = {}
    for protocol, name, frames, masks, gt in protocol_videos(data):
        write_png_folder(root / "Annotations" / "480p" / name, masks)
        write_png_folder(root / "Backgrounds" / "480p" / name, gt)
        write_png_folder(root / "JPEGImages" / "480p" / name, frames)  # last: the sequence now exists
        protocols[name] = protocol
    write_text_atomic(index_file, json.dumps(protocols, indent=2, sort_keys=True))
    return protocols


def forge_groups(conditions: Sequence[Condition]) -> list[list[Condition]]:
    """Conditions packed into forge runs with at most one condition per method each."""
    groups: list[list[Condition]] = []
    for cond in conditions:
        group = next((g for g in groups if all(c.method != cond.method for c in g)), None)
        if group is None:
            groups.append(group := [])
        group.append(cond)
    return groups


# ----------------------------------------------------------------------------- protocol


def score_condition(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Ray task: quality of one condition's forged videos against the ground truth, per video."""
    from vilocal_dist.data.manifest import ForgedDataset, video_id
    from vilocal_dist.data.sources import load_video
    from vilocal_dist.inpaint.metrics import quality_metrics
    from vilocal_dist.video.io import read_frames

    forged = ForgedDataset(job["forged"])
    records = {r["id"]: r for r in forged.records(methods=[job["method"]])}
    rows = []
    for name, protocol in sorted(job["videos"].items()):
        vid = video_id(name, job["method"])
        frames, masks = load_video(forged.video_dir(vid))
        gt = read_frames(Path(job["sources"]) / "Backgrounds" / "480p" / name)
        record = records.get(vid, {})
        metrics = record.get("metrics") or {}
        iterations = metrics.get("train/iters", metrics.get("train/updates", math.nan))
        # IIVI's own clock counts a phase 1 taken from the shared cache; the record's, only this call.
        seconds = metrics.get("train/seconds", record.get("seconds", math.nan))
        rows.append({"condition": job["condition"], "method": job["method"], "protocol": protocol, "video": name,
                     **quality_metrics(frames, gt, masks), "seconds": float(seconds),
                     "iterations": float(iterations), "converged": converged(record),
                     "history": record.get("history") or []})  # fmt: skip
    return rows


def run(config: QualityConfig, recorder: Any, *, workdir: Path) -> Any:
    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs
    from vilocal_dist.experiments.registry import Outcome

    d = config.data
    base = workdir / "quality" / config_hash({k: v for k, v in vars(d).items() if k not in
                                             ("cpus_per_trial", "gpus_per_trial", "max_concurrent", "retries")})
    protocols = write_test_videos(d, base / "sources")
    videos = expand_sources([str(base / "sources")])
    forged_of: dict[str, Path] = {}
    # IIVI's regulariser ablations differ only in phase 2: they share each video's phase 1.
    recon_cache = {"recon_cache": str(base / "iivi-recon")}
    for group in forge_groups(config.conditions):
        cfgs = {c.method: ({**recon_cache, **c.cfg} if c.method == "iivi" else dict(c.cfg)) for c in group}
        out = base / "forged" / config_hash(cfgs)
        jobs = plan_jobs(videos, list(cfgs), method_cfgs={m: c for m, c in cfgs.items() if c}, test_fraction=0.0)
        summary = forge(jobs, ForgeOptions(out=str(out), test_fraction=0.0, seed=d.seed, cpus_per_trial=d.cpus_per_trial,
                                           gpus_per_trial=d.gpus_per_trial, max_concurrent=d.max_concurrent,
                                           retries=d.retries))
        if summary.failed:
            raise InputError(f"inpainting failed for {', '.join(summary.failed)}; rerun to retry them", out)
        forged_of.update({c.name: out for c in group})
    jobs = [{"condition": c.name, "method": c.method, "forged": str(forged_of[c.name]), "sources": str(base / "sources"),
             "videos": protocols} for c in config.conditions]
    per_video = [row for rows in ray_map(score_condition, jobs, cpus=config.eval_cpus, desc="score") for row in rows]

    rows = []
    for cond in config.conditions:
        metrics = {}
        for protocol in PROTOCOLS:
            chosen = [r for r in per_video if r["condition"] == cond.name and r["protocol"] == protocol]
            if not chosen:
                continue
            means = {k: _nanmean([r[k] for r in chosen]) for k in METRICS + COSTS}
            rows.append({"condition": cond.name, "method": cond.method, "type": cond.type, "protocol": protocol,
                         **means, "videos": len(chosen)})
            metrics.update({f"{protocol}/{k}": v for k, v in means.items()})
        recorder.child(cond.name, params={"method": cond.method, "type": cond.type, "cfg": dict(cond.cfg),
                                          "forged": str(forged_of[cond.name])}, metrics=metrics)
    from vilocal_dist.inpaint.quality import format_table as per_video_table
    from vilocal_dist.tracking.sweep_report import to_csv

    detail_columns = ["condition", "method", "protocol", "video", *METRICS, *COSTS]
    texts = {"per_video.csv": to_csv(per_video, detail_columns),
             "per_video.md": per_video_table([{**r, "method": r["condition"]} for r in per_video]) + "\n",
             "curves.json": json.dumps([{k: r[k] for k in ("condition", "video", "history")} for r in per_video
                                        if r["history"]], default=float) + "\n"}  # fmt: skip
    figures = {"plots/quality.png": figure(rows)}
    if any(r["history"] for r in per_video):
        figures["plots/curves.png"] = curves_figure(per_video)
    caption = (f"Means over videos ({d.frames} frames at {d.size_h}x{d.size_w}); PSNR (dB) and SSIM on composited "
               "frames, TC = temporal consistency (dB, InterVI's patch metric). Test videos: "
               + ", ".join(f"{sum(p == q for p in protocols.values())} {q}" for q in PROTOCOLS)
               + "; time = the method's wall time per video (s), its = iterations per video (internal methods) and, "
               "in brackets, the share of fits their stopping rule ended (the rest ran into their maximum).")
    return Outcome(rows, COLUMNS, format_table(rows, caption), figures=figures, texts=texts)


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None or math.isnan(value) else fmt.format(value)


def format_table(rows: Sequence[Mapping[str, Any]], caption: str = "") -> str:
    """IIVI Table 1 layout: a line per condition, PSNR / SSIM / TC under each protocol."""
    present = [p for p in PROTOCOLS if any(r["protocol"] == p for r in rows)]
    titles = {"fixed": "fixed masks", "object": "object masks"}
    header = ["method", "type"] + [f"{titles[p]} {m}" for p in present for m in ("PSNR", "SSIM", "TC")] + ["time (s)",
                                                                                                       "its (converged)"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (3 * len(present) + 2)]
    for condition in dict.fromkeys(r["condition"] for r in rows):
        group = {r["protocol"]: r for r in rows if r["condition"] == condition}
        cells = []
        for p in present:
            r = group.get(p, {})
            cells += [_num(r.get("psnr"), "{:.2f}"), _num(r.get("ssim"), "{:.3f}"), _num(r.get("tc"), "{:.2f}")]
        every = list(group.values())
        conv = [r.get("converged", math.nan) for r in every]
        share = "" if all(math.isnan(c) for c in conv) else f" ({_nanmean(conv):.0%})"
        cells += [_num(_nanmean([r.get("seconds", math.nan) for r in every]), "{:.1f}"),
                  _num(_nanmean([r.get("iterations", math.nan) for r in every]), "{:.0f}") + share]
        kind = next(iter(group.values()))["type"]
        lines.append(f"| {condition} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + ("\n\n" + caption if caption else "") + "\n"


def figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    """PSNR and SSIM per condition, one bar per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    present = [p for p in PROTOCOLS if any(r["protocol"] == p for r in rows)]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(conditions) + 4), 3.8))
    width = 0.8 / max(len(present), 1)
    for ax, metric in zip(axes, ("psnr", "ssim")):
        for i, protocol in enumerate(present):
            values = {r["condition"]: r[metric] for r in rows if r["protocol"] == protocol}
            xs = [j + (i - (len(present) - 1) / 2) * width for j in range(len(conditions))]
            ax.bar(xs, [values.get(c, math.nan) for c in conditions], width, label=f"{protocol} masks")
        ax.set_xticks(range(len(conditions)), conditions, rotation=30, ha="right")
        ax.set_ylabel(metric.upper() + (" (dB)" if metric == "psnr" else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Inpainting quality (IIVI Table 1)")
    fig.tight_layout()
    return fig


def curves_figure(per_video: Sequence[Mapping[str, Any]]) -> Any:
    """Learning curves of the internal methods: one colour per condition, a line per video."""
    from vilocal_dist.inpaint.curves import curves_figure as figure_of

    return figure_of([(r["condition"], r["history"]) for r in per_video if r["history"]],
                     "Learning curves of the internal methods (one line per video)")
