"""`vilocal evaluate`: pixel F1 / IoU of a trained checkpoint on a forged dataset split."""

from __future__ import annotations

import argparse
import json

from vilocal_dist.cli.args import parse_size


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="pixel F1 / IoU of a checkpoint on a forged dataset, by method",
        description=(
            "Score a stage-2 checkpoint on every frame of every video in a split of a forged dataset:\n"
            "F1 and IoU at the threshold per frame, pooled over all frames (the paper's number) and\n"
            "averaged per video, overall and per inpainting method, beside the trivial all-zeros /\n"
            "all-ones predictors. Frames with empty ground truth: empty prediction scores 1, any\n"
            "predicted pixel scores 0 (VIDNet convention); their count is reported."
        ),
        epilog="example:\n  vilocal evaluate --model runs/ray/demo-stage2/epoch_0004 --data runs/forged --split test",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="CKPT", help="stage-2 checkpoint (folder or model.pt)")
    p.add_argument("--data", required=True, metavar="DIR", help="forged dataset folder")
    p.add_argument("--split", choices=("train", "test"), default="test", help="split to score (default test)")
    p.add_argument("--methods", default=None, help="only these inpainting methods (comma-separated)")
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW",
                   help="input size (default: the model's training size)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per forward pass (default 4)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.cli import checks
    from vilocal_dist.engines.evaluate import evaluate_checkpoint
    from vilocal_dist.errors import ConfigError

    if not 0.0 < args.threshold < 1.0:
        raise ConfigError(f"--threshold must be in (0, 1), got {args.threshold}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    data = checks.input_path(args.data, "--data", must_exist=False)
    result = evaluate_checkpoint(args.model, data, split=args.split, methods=methods, size=args.size,
                                 threshold=args.threshold, batch_size=max(1, args.batch_size), progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"evaluate: {result['model_name']} on {result['data']} split {result['split']} "
          f"at {result['size'][0]}x{result['size'][1]}, threshold {result['threshold']}")
    print(f"  {result['frames']} frames of {result['videos']} videos, {result['empty_gt_frames']} with empty ground truth")
    print(f"  convention: {result['convention']}")
    rows = [("all", result)] + sorted(result.get("by_method", {}).items())
    print(f"  {'method':<14} {'frames':>6}  {'F1 pooled':>9} {'IoU pooled':>10}  {'F1/video':>8} {'IoU/video':>9}")
    for name, r in rows:
        print(f"  {name:<14} {r['frames']:>6}  {r['pooled']['f1']:>9.4f} {r['pooled']['iou']:>10.4f}  "
              f"{r['per_video']['f1']:>8.4f} {r['per_video']['iou']:>9.4f}")
    for name, b in result["baselines"].items():
        print(f"  {'(' + name + ')':<14} {'':>6}  {b['pooled']['f1']:>9.4f} {b['pooled']['iou']:>10.4f}  "
              f"{b['per_video']['f1']:>8.4f} {b['per_video']['iou']:>9.4f}")
    return 0
