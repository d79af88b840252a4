"""`vilocal detect`: localize inpainted regions in a video with a trained ViLocal checkpoint."""

from __future__ import annotations

import argparse

from vilocal_dist.cli.args import parse_size


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "detect",
        help="localize inpainted regions in a video: probability maps, masks, overlay, report",
        description=(
            "Run a stage-2 ViLocal checkpoint over every frame of VIDEO (streaming 5-frame windows,\n"
            "ends reflected) and write to DIR: probs/*.png (8-bit, round(255*p), at the video's size),\n"
            "masks/*.png (p > threshold), overlay.mp4 (detections tinted red) and report.json\n"
            "(per-frame forged fraction, video score, model, threshold, input sha256). Written under\n"
            "DIR/.tmp and moved into place; report.json is written last."
        ),
        epilog="example:\n  vilocal detect clip.mp4 --model runs/ray/demo-stage2/epoch_0004 --out detections/clip",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("video", help="video file, frame folder, DAVIS sequence folder, forged video folder or composed:SEED")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="stage-2 checkpoint (folder or model.pt) or registered model "
                        "(models:/vilocal-detector/VERSION or models:/vilocal-detector@ALIAS)")
    p.add_argument("--out", required=True, metavar="DIR|URI", help="output folder or storage URI")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold for masks (default 0.5)")
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW",
                   help="model input size (default: the size the model was trained at)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.engines.detect import detect_video
    from vilocal_dist.storage import normalize

    report = detect_video(args.video, args.model, args.out, threshold=args.threshold, size=args.size,
                          batch_size=max(1, args.batch_size))
    flagged = sum(f["forged_fraction"] > 0 for f in report["per_frame"])
    print(f"detect: {report['frames']} frames, {flagged} with detections; "
          f"video score {report['video_score']:.3f} ({report['video_score_definition']})")
    print(f"  outputs in {normalize(args.out)}: probs/, masks/, overlay.mp4, report.json")
    return 0
