"""`vilocal evaluate`: pixel F1 / IoU of a trained checkpoint, or of another detector's saved
predictions, on a forged (or imported) dataset split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vilocal_dist.cli import checks
from vilocal_dist.cli.args import parse_size


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="pixel F1 / IoU of a checkpoint (or another detector's predictions) on a dataset, by method",
        description=(
            "Score a stage-2 checkpoint on every frame of every video in a split of a forged dataset:\n"
            "F1 and IoU at the threshold per frame, pooled over all frames (the paper's number) and\n"
            "averaged per video, overall and per inpainting method, beside the trivial all-zeros /\n"
            "all-ones predictors. Frames with empty ground truth: empty prediction scores 1, any\n"
            "predicted pixel scores 0 (VIDNet convention); their count is reported.\n\n"
            "--predictions DIR scores another detector's output instead of a checkpoint, with the same\n"
            "metrics: DIR/<video id>/<frame>.png (gray or 0/255 masks, value/max = probability) or .npy\n"
            "(float probabilities in [0,1]); the i-th file by name is frame i; video ids are the\n"
            "manifest's (source__method). Every missing or mis-sized file is listed before scoring.\n"
            "With --experiment the result is logged as one MLflow run tagged vilocal.detector."
        ),
        epilog=(
            "examples:\n"
            "  vilocal evaluate --model runs/ray/demo-stage2/epoch_0004 --data runs/forged --split test\n"
            "  vilocal evaluate --predictions out/imdl_masks --detector-name imdl-model --data runs/imported \\\n"
            "      --experiment detectors\n"
            "  vilocal evaluate --predictions out/vilocal_probs --detector-name vilocal-authors \\\n"
            "      --data runs/imported --size 240x432 --experiment detectors"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", metavar="MODEL",
                      help="stage-2 checkpoint (folder or model.pt) or registered model "
                           "(models:/vilocal-detector/VERSION or models:/vilocal-detector@ALIAS)")
    what.add_argument("--predictions", type=Path, metavar="DIR",
                      help="another detector's masks / probability maps: DIR/<video id>/<frame>.png|.npy")
    p.add_argument("--detector-name", default=None,
                   help="name of the detector that made --predictions (default: the folder's name)")
    p.add_argument("--data", required=True, metavar="DIR|URI", help="forged or imported dataset folder, or storage URI")
    p.add_argument("--split", choices=("train", "test"), default="test", help="split to score (default test)")
    p.add_argument("--methods", default=None, help="only these inpainting methods (comma-separated)")
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW",
                   help="input size (default: the model's training size; predictions: the dataset's size)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per forward pass (default 4)")
    p.add_argument("--experiment", default=None,
                   help="also log the result as one MLflow run in this experiment (tags: detector, data)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--report", default=None, metavar="FILE|URI", help="also write the full result as JSON here (atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.errors import ConfigError
    from vilocal_dist.tracking.model_registry import is_model_uri, record_evaluation

    if not 0.0 < args.threshold < 1.0:
        raise ConfigError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.detector_name and not args.predictions:
        raise ConfigError("--detector-name names the detector of --predictions; a checkpoint names itself")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    args.data = checks.input_path(args.data, "--data", must_exist=False)
    if args.predictions:
        result = _score_predictions(args, methods)
        if result is None:
            return 2
    else:
        from vilocal_dist.engines.evaluate import evaluate_checkpoint

        result = evaluate_checkpoint(args.model, args.data, split=args.split, methods=methods, size=args.size,
                                     threshold=args.threshold, batch_size=max(1, args.batch_size),
                                     progress=not args.json)
    if args.experiment:
        result["mlflow_run_id"] = log_result(result, args.experiment, "predictions" if args.predictions else "checkpoint")
    if args.experiment or is_model_uri(args.model or ""):  # the dataset is the run's input; a registered
        # model gets the scores on its version (without --experiment, in a run of vilocal-evaluate)
        result["mlflow_run_id"] = record_evaluation(args.model or args.predictions, args.data, result,
                                                    split=args.split, run_id=result.get("mlflow_run_id"))
    if args.report:
        from vilocal_dist.storage import write_text

        write_text(args.report, json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print_result(result)
    if "mlflow_run_id" in result:
        print(f"  MLflow: evaluation run {result['mlflow_run_id']}"
              + (f"; scores added to {args.model}" if is_model_uri(args.model or "") else ""))
    return 0


def _score_predictions(args: argparse.Namespace, methods: list[str] | None) -> dict | None:
    """Scores of --predictions, or None after printing every problem with the files."""
    import sys

    from vilocal_dist.engines.predictions import PredictionProblems, score_predictions

    detector = args.detector_name or args.predictions.resolve().name
    try:
        return score_predictions(args.predictions, args.data, split=args.split, methods=methods, threshold=args.threshold,
                                 size=args.size, detector=detector, progress=not args.json)
    except PredictionProblems as exc:
        print(f"vilocal: error: {exc}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def log_result(result: dict, experiment: str, kind: str) -> str:
    """One MLflow run holding an evaluation: which detector (tag), on what, and its scores."""
    import mlflow

    from vilocal_dist.tracking.model_registry import evaluation_metrics
    from vilocal_dist.tracking.runs import log_json, mlflow_run

    tags = {"vilocal.detector": result["model_name"], "vilocal.detector_kind": kind,
            "vilocal.data": result["data"], "vilocal.split": result["split"]}
    params = {"detector": result["model_name"], "source": result["model"], "data": result["data"],
              "split": result["split"], "threshold": result["threshold"], "size": result["size"]}
    metrics = evaluation_metrics(result, result["split"])
    with mlflow_run(experiment, f"evaluate-{result['model_name']}", params=params, tags=tags) as run:
        mlflow.log_metrics(metrics)
        log_json(result, "evaluation.json")
        return run.info.run_id


def print_result(result: dict) -> None:
    """The evaluation table: overall and per method, pooled and per video, beside the trivial predictors."""
    size = f"{result['size'][0]}x{result['size'][1]}" if result["size"] else "the dataset's size"
    print(f"evaluate: {result['model_name']} on {result['data']} split {result['split']} "
          f"at {size}, threshold {result['threshold']}")
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
