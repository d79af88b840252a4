"""`vilocal inpaint`: remove the masked regions of one video with any registered method.

Masks come either as a full sequence (a folder of images or a mask video, one per frame) or as
one mask image for one frame (``--mask-frame``), which is first propagated to every frame. Output
folder: ``frames/`` (lossless PNG), ``masks/`` (PNG), a preview video, and ``result.json``
(method, resolved config, the method's own metrics, input description and hash), written last.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vilocal_dist import __version__
from vilocal_dist.cli import checks
from vilocal_dist.config import apply_sets, parse_sets, size_arg
from vilocal_dist.console import phase
from vilocal_dist.data.sources import load_video, open_source
from vilocal_dist.errors import ConfigError, InputError
from vilocal_dist.video.io import IMAGE_EXTS, read_mask_image, resize_mask, write_png_folder, write_video
from vilocal_dist.video.validate import check_same_size


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inpaint",
        help="inpaint (remove) the masked regions of a video",
        description=(
            "Fill the masked regions of VIDEO with an inpainting method.\n\n"
            "MASK is a folder of mask images or a mask video (one mask per frame), or a single\n"
            "mask image for frame --mask-frame, which is propagated to all frames first. Without\n"
            "--mask the video's own masks are used (DAVIS layout, composed:SEED videos).\n"
            "Writes OUT/frames/*.png, OUT/masks/*.png, OUT/result.mp4 (preview), OUT/result.json.\n\n"
            "Removing an object from one mask: paint the object white on black on one frame (the\n"
            "video's size), pass it as --mask and its frame index as --mask-frame. A middle frame\n"
            "where the object is fully visible propagates best (outward in both directions). A\n"
            "small network is fitted to that frame until its loss plateaus and its masks agree\n"
            "(at most --prop max_iters=N); then frames are visited outward, the network's mask kept\n"
            "where it meets the previous mask carried by optical flow, and the network adapts to\n"
            "the frames it is confident about. Masks are dilated by --dilate pixels before\n"
            "inpainting and saved in OUT/masks/. result.json holds each frame's confidence and the\n"
            "frames where the mask may have lost the object (sudden area change, low confidence);\n"
            "they are also printed at the end: check those frames.\n\n"
            "Frames larger than --tile are inpainted coarse to fine: the whole video at --coarse\n"
            "pixels, then full-resolution tiles around the hole with the coarse result as prior,\n"
            "so memory stays bounded on 4K input (OUT/seams.png shows the tile borders).\n\n"
            "Methods: the built-in ones, `command` (any external program, run once per video on PNG\n"
            "folders: --set template='PROG {frames_dir} {masks_dir} {out_dir}', optional env=, image=,\n"
            "timeout_s=), and plugins: installed packages with an entry point in the group\n"
            "vilocal_dist.inpaint_methods (see the README, \"Adding an inpainting method\")."
        ),
        epilog=(
            "examples:\n"
            "  vilocal inpaint clip.mp4 --mask clip_masks/ --out out/ --method flowprop\n"
            "  vilocal inpaint clip.mp4 --mask first.png --mask-frame 0 --out out/ --size 240x432\n"
            "  vilocal inpaint DAVIS --seq bmx-trees --mask 00040.png --mask-frame 40 --method telea --out out/\n"
            "  vilocal inpaint clip_4k/ --mask masks_4k/ --tile 512 --coarse 432 --method flowprop --out out/\n"
            "  vilocal inpaint composed:0:12:64x112 --out out/ --method intervi --set preset=tiny\n"
            "  vilocal inpaint clip.mp4 --mask clip_masks/ --out out/ --method command \\\n"
            "      --set template='python /opt/fill.py {frames_dir} {masks_dir} {out_dir}' --set timeout_s=600"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("video", metavar="VIDEO", help="video file, frame folder, DAVIS root/sequence, or composed:SEED[:T[:HxW]]")
    p.add_argument("--mask", metavar="MASK_OR_DIR", help="mask folder, mask video, or one mask image (see --mask-frame)")
    p.add_argument("--mask-frame", type=int, default=None, metavar="N", help="frame index of a single mask image (default 0)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.add_argument("--method", default="iivi", help="inpainting method (default iivi; `--method list` lists them)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="method option, repeatable (e.g. --set preset=tiny --set iterations=500)",
    )  # fmt: skip
    p.add_argument(
        "--prop", dest="prop_overrides", action="append", default=[], metavar="KEY=VALUE",
        help="mask propagation option, repeatable (e.g. --prop max_iters=300 --prop size=320)",
    )  # fmt: skip
    p.add_argument("--dilate", type=int, default=5, metavar="PX",
                   help="dilate propagated masks by PX pixels before inpainting (default 5; 0 = off)")
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="inpaint frames larger than PX coarse to fine in PX×PX tiles (bounded memory)")
    p.add_argument("--coarse", type=int, default=432, metavar="PX", help="longest side of the coarse pass of --tile (default 432)")
    p.add_argument("--size", type=size_arg(1), default=None, metavar="HxW", help="working resolution, e.g. 240x432")
    p.add_argument("--max-frames", type=int, default=None, metavar="T", help="use only the first T frames")
    p.add_argument("--workdir", type=Path, default=None, help="checkpoints for resuming (default OUT/.work)")
    p.add_argument("--seq", default=None, help="sequence name when VIDEO is a DAVIS root with several")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--preview", choices=("mp4", "mkv", "none"), default="mp4", help="preview video (mkv = lossless FFV1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--mlflow", action="store_true",
                   help="also record the run in MLflow (experiment vilocal-inpaint): metrics, result.json, the "
                        "propagation plot with per-frame IoU/confidence, seams.png and the preview")  # fmt: skip
    p.add_argument(
        "--auto-lambda", action="store_true",
        help="choose IIVI's λ_a/λ_s for this video: a small Ray Tune sweep scored by the self-validation "
             "PSNR on held-out known pixels (no ground truth needed); keeps the best result",
    )
    p.add_argument("--lambda-samples", type=int, default=None, metavar="N",
                   help="with --auto-lambda: N Optuna TPE samples instead of the default 3×3 grid")
    p.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="F",
                   help="with --auto-lambda: GPUs per trial (fractions pack trials on a GPU; default 0 = CPU)")
    p.set_defaults(func=run)


def input_hash(frames: np.ndarray, masks: np.ndarray) -> str:
    """sha256 of the decoded frames and masks at working resolution (what the method saw)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([list(frames.shape), list(masks.shape)]).encode())
    digest.update(np.ascontiguousarray(frames).tobytes())
    digest.update(np.packbits(masks).tobytes())
    return "sha256:" + digest.hexdigest()


def _single_mask(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS


def load_inputs(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Frames, masks (propagated when a single mask is given) and a description of the input."""
    mask = None if args.mask is None else Path(args.mask).expanduser()
    if mask is not None and not mask.exists():
        raise InputError("no such mask file or folder", mask)
    single = mask is not None and _single_mask(mask)
    if args.mask_frame is not None and not single:
        raise ConfigError("--mask-frame applies to a single mask image, not a mask folder or video")
    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames must be >= 1, got {args.max_frames}")
    source = open_source(args.video, seq=args.seq, mask_path=None if single else mask)
    described: dict[str, Any] = {"video": source.spec, "mask": None if mask is None else str(mask)}
    if not single:
        frames, masks = load_video(source, args.size, args.max_frames)
        described["mask_kind"] = "sequence"
    else:
        frames, reference = load_video(source, args.size, args.max_frames, require_masks=False)
        index = 0 if args.mask_frame is None else args.mask_frame
        if not 0 <= index < len(frames):
            raise ConfigError(f"--mask-frame {index} is outside the {len(frames)} frames used")
        one = read_mask_image(mask)
        check_same_size((source.height, source.width), one.shape, mask, "mask")
        one = resize_mask(one, args.size)
        if not one.any():
            raise InputError("mask is empty: nothing to inpaint", mask)
        propagation = importlib.import_module("vilocal_dist.inpaint.propagation")
        phase(f"propagating the mask of frame {index} to {len(frames)} frames")
        started = time.perf_counter()
        prop = propagation.propagate_mask(
            frames, one, index, apply_sets({}, parse_sets(args.prop_overrides)), seed=args.seed, progress=not args.quiet
        )
        masks = propagation.dilate(prop.masks, args.dilate)
        summary = {**prop.summary(), "seconds": time.perf_counter() - started, "dilate": args.dilate}
        summary["load_average"] = os.getloadavg()[0]
        if source.has_masks:  # the video's own masks (DAVIS annotations): score the propagation against them
            from vilocal_dist.bench.propagation import iou_per_frame

            iou = iou_per_frame(prop.masks, reference)
            summary.update(iou=[round(float(v), 4) for v in iou], mean_iou=float(iou.mean()))
        described.update(mask_kind="single", mask_frame=index, propagation=summary)
    if not masks.any():
        raise InputError("every mask is empty: nothing to inpaint", mask or args.video)
    if masks.all():
        raise InputError("every pixel of every frame is masked: no known pixels to inpaint from", mask or args.video)
    described.update(frames=int(len(frames)), size=[int(frames.shape[1]), int(frames.shape[2])])
    return frames, masks.astype(bool), described


def _jsonable(value: Any) -> Any:
    """JSON has no inf/NaN: write them as the strings "inf", "-inf", "nan"."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_preview(out: Path, frames: np.ndarray, kind: str) -> str | None:
    """H.264 mp4 preview; odd frame sizes (4:2:0 needs even) and ``mkv`` get lossless FFV1."""
    if kind == "none":
        return None
    if kind == "mp4" and frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0:
        return write_video(out / "result.mp4", iter(frames), codec="libx264", crf=18).name
    return write_video(out / "result.mkv", iter(frames), codec="ffv1").name


def _print_methods() -> None:
    from vilocal_dist.inpaint.registry import get_method, list_methods, plugins

    for name in list_methods():
        print(f"{name:<10} {get_method(name).summary}")
    for problem in plugins().broken.values():
        print(f"(unusable) {problem}")


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.inpaint.registry import get_method

    if args.method == "list":
        _print_methods()
        return 0
    method = get_method(args.method)
    cfg = apply_sets({}, parse_sets(args.overrides))
    method.resolve(cfg)  # every option checked before decoding anything
    if args.auto_lambda:
        from vilocal_dist.distributed.auto_lambda import check_lambda_method

        check_lambda_method(args.method, cfg)
    _check_one_mask_and_tile_flags(args)
    out = Path(checks.output_dir(args.out))
    frames, masks, described = load_inputs(args)
    out.mkdir(parents=True, exist_ok=True)
    workdir = (args.workdir or out / ".work").expanduser()
    phase(f"inpainting {len(frames)} frames of {frames.shape[2]}x{frames.shape[1]} with {args.method}")
    started = time.perf_counter()
    lambda_table = None
    if args.auto_lambda:
        from vilocal_dist.distributed.auto_lambda import auto_lambda
        from vilocal_dist.console import tune_verbosity
        from vilocal_dist.distributed.tuning import init_ray

        init_ray(address=os.environ.get("RAY_ADDRESS"))
        result, lambda_table = auto_lambda(
            frames, masks, num_samples=args.lambda_samples, base_cfg=cfg, method=args.method, seed=args.seed,
            verbose=0 if args.quiet else tune_verbosity(), gpus_per_trial=args.gpus_per_trial,
        )
    elif args.tile is not None:
        from vilocal_dist.inpaint.highres import inpaint_highres, seam_overlay

        tiling = {"tile": args.tile, "coarse": args.coarse}
        result = inpaint_highres(method, frames, masks, tiling, cfg, seed=args.seed, progress=not args.quiet, workdir=workdir)
    else:
        result = method(frames, masks, cfg, seed=args.seed, progress=not args.quiet, workdir=workdir)
    seconds = time.perf_counter() - started
    # From here the old outputs are being replaced: without result.json the folder reads as incomplete.
    (out / "result.json").unlink(missing_ok=True)
    write_png_folder(out / "frames", iter(result.frames))
    write_png_folder(out / "masks", iter(masks))
    preview = _write_preview(out, result.frames, args.preview)
    if args.tile is not None and result.metrics.get("highres/tiles"):
        seam_overlay(out / "seams.png", result.frames, masks, tiling)
    propagation = described.pop("propagation", None)
    record = {
        "method": args.method,
        "config": result.config,
        "overrides": cfg,
        "metrics": {**result.metrics, "runtime/seconds": seconds},
        "history": result.history,  # learning curve of internal methods (selfval/psnr per evaluation)
        "input": {**described, "hash": input_hash(frames, masks)},
        "seed": args.seed,
        "outputs": {"frames": "frames", "masks": "masks", "preview": preview},
        "vilocal_dist_version": __version__,
    }
    if lambda_table is not None:
        record["auto_lambda"] = lambda_table
    if propagation is not None:
        record["propagation"] = propagation
        _plot_propagation(out / "propagation.png", propagation, described)
    record["metrics"]["memory/peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _write_json_atomic(out / "result.json", record)
    print(f"wrote {out} ({len(frames)} frames, {args.method}, {seconds:.1f} s)")
    if args.mlflow:
        _log_mlflow(out, record, args)
    if propagation is not None:
        _print_propagation(propagation)
    return 0


def _log_mlflow(out: Path, record: dict[str, Any], args: argparse.Namespace) -> None:
    """The run in MLflow: params, numeric metrics, per-frame propagation curves (step = frame) and
    the files people look at. A tracking server that is away costs a warning, not the result."""
    import mlflow

    from vilocal_dist.tracking.runs import mlflow_run
    from vilocal_dist.tracking.setup import ui_command
    from vilocal_dist.tracking.spool import bounded_http, is_transient, short_error

    params = {"method": args.method, "out": str(out), "video": record["input"].get("video"),
              "mask_kind": record["input"].get("mask_kind"), "tile": args.tile, "coarse": args.coarse,
              "dilate": args.dilate, "seed": args.seed, "config": record["config"]}  # fmt: skip
    numeric = {k: float(v) for k, v in record["metrics"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    try:
        with bounded_http(), mlflow_run("vilocal-inpaint", out.name, params=params, tags={"vilocal.kind": "inpaint"}):
            mlflow.log_metrics(numeric)
            propagation = record.get("propagation") or {}
            if propagation.get("mean_iou") is not None:
                mlflow.log_metric("propagation/mean_iou", float(propagation["mean_iou"]))
            curves = {name: propagation.get(name) or [] for name in ("iou", "confidence")}
            for frame in range(max(map(len, curves.values()))):
                mlflow.log_metrics({f"propagation/{name}": float(values[frame]) for name, values in curves.items()
                                    if frame < len(values) and values[frame] is not None}, step=frame)
            for name in ("result.json", "propagation.png", "seams.png", record["outputs"].get("preview") or ""):
                if name and (out / name).is_file():
                    mlflow.log_artifact(str(out / name))
    except Exception as exc:  # noqa: BLE001 - the inpainted video is written; tracking is extra
        if not is_transient(exc):
            raise
        print(f"warning: MLflow is not answering ({short_error(exc)}); {out} is complete, the run was not recorded",
              file=sys.stderr)
        return
    print(f"MLflow: {ui_command()}")


def _check_one_mask_and_tile_flags(args: argparse.Namespace) -> None:
    if args.dilate < 0:
        raise ConfigError(f"--dilate must be >= 0, got {args.dilate}")
    if args.tile is not None or args.coarse != 432:
        from vilocal_dist.inpaint.highres import HighResConfig

        HighResConfig(tile=args.tile or HighResConfig.tile, coarse=args.coarse)
    if args.prop_overrides:
        from vilocal_dist.inpaint.propagation import check_propagation_config

        check_propagation_config(apply_sets({}, parse_sets(args.prop_overrides)))


def _plot_propagation(path: Path, summary: dict[str, Any], described: dict[str, Any]) -> None:
    """Per-frame confidence (and IoU against the video's own masks, when it has them) as a PNG."""
    from vilocal_dist.bench.propagation import plot

    row = {"start": described["mask_frame"], "confidence": summary["confidence"]}
    row.update(iou=summary.get("iou"), mean_iou=summary.get("mean_iou"))
    plot([row], path, f"{Path(str(described['video'])).name}: mask of frame {row['start']} propagated")


def _print_propagation(summary: dict[str, Any]) -> None:
    """Where the propagated mask may have lost the object: the frames a user should look at."""
    print(
        f"mask propagation: {summary['iters']} iterations ({summary['stop']}) + {summary['adapt_iters']} adapting, "
        f"{summary['seconds']:.1f} s (load average {summary['load_average']:.1f}), "
        f"mean confidence {summary['mean_confidence']:.2f}"
        + (f", mean IoU vs the video's masks {summary['mean_iou']:.3f}" if "mean_iou" in summary else "")
    )
    reasons = summary["flag_reasons"]
    if not reasons:
        print("no frame flagged")
        return
    print(f"{len(reasons)} frame(s) flagged, check their masks in masks/:")
    for frame, why in list(reasons.items())[:12]:
        print(f"  frame {frame}: {why}")
    if len(reasons) > 12:
        print(f"  … and {len(reasons) - 12} more (result.json, propagation.flag_reasons)")
