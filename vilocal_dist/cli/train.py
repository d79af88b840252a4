"""`vilocal train`: the two ViLocal stages on Ray Train, logged to MLflow."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vilocal_dist.engines.config import DEFAULT_MAX_FAILURES, STAGES
from vilocal_dist.errors import ConfigError


#: stage2_encoder_lr_factor of `vilocal train --stage both|2` unless a config or --set says otherwise.
FINETUNE_FACTOR = 0.1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the ViLocal detector (stage 1 contrastive, stage 2 focal) on Ray Train",
        description=(
            "Train ViLocal on a forged dataset (see `vilocal forge`) with Ray Train DDP workers\n"
            "(GPUs when the cluster has them, CPU/gloo otherwise). Stage 1 trains the encoder with the\n"
            "supervised contrastive loss (tau); stage 2 trains the decoder with the focal loss (alpha,\n"
            "gamma) and fine-tunes the encoder at a tenth of its lr (the paper freezes it). Validation\n"
            "videos are held out of the train split by source video; the test split is never used.\n"
            "Defaults are the paper's (AdamW, cosine, batch 2, 10 + 5 epochs, 240x432) but for that\n"
            "fine-tuning. Config: defaults < --config YAML < --preset < --set key=value.\n"
            "Rerunning with the same --run-name resumes from the latest checkpoint (the MLflow run is\n"
            "reused; e.g. raise stage1_epochs to train further)."
        ),
        epilog=(
            "examples:\n"
            "  vilocal train --stage both --data runs/forged --preset vilocal_small --workers 2 \\\n"
            "      --set size_h=96 --set size_w=160 --run-name demo\n"
            "  vilocal train --stage 2 --data runs/forged --encoder runs/ray/demo-stage1/epoch_0009 \\\n"
            "      --set alpha=0.75 --run-name demo-a75\n"
            "keys for --set: see vilocal_dist/engines/config.py (TrainConfig)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--stage", choices=STAGES, default="both",
                   help="1, 2 (needs --encoder), both (stage 2 from stage 1's best checkpoint; default), joint "
                        "(no contrastive stage: encoder + decoder trained together with the focal loss only) or "
                        "random (stage 2 alone on a never-trained encoder: the control for stage 1). Stages 2 "
                        "and both fine-tune the encoder in stage 2 at 0.1 x the decoder's lr by default: in the "
                        "laptop ablation that variant scored best on the unseen method at every threshold (README, "
                        "'Ablation with its controls'); --set stage2_encoder_lr_factor=0 freezes it (the paper)")
    p.add_argument("--data", required=True, metavar="DIR|URI", help="forged dataset folder or storage URI (manifest.jsonl)")
    p.add_argument("--methods", default=None, help="train on these inpainting methods only (comma-separated)")
    p.add_argument("--preset", default=None, help="model preset: vilocal (paper), vilocal_small, vilocal_tiny")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP processes), default 1")
    p.add_argument("--use-gpu", choices=("auto", "yes", "no"), default="auto",
                   help="auto (default): GPU workers when the cluster has GPUs or its autoscaler can start GPU nodes; "
                        "yes: fail at once if it cannot; no: CPU workers (gloo)")
    p.add_argument("--gpus-per-worker", type=float, default=1.0, metavar="N",
                   help="GPUs per Train worker with GPUs (default 1; a fraction shares a GPU)")
    p.add_argument("--run-name", default=None,
                   help="name of this training run (Ray storage folder and MLflow tag); reuse it to resume")
    p.add_argument("--encoder", default=None, metavar="CKPT", help="stage-1 checkpoint (folder or model.pt) for --stage 2")
    p.add_argument("--config", type=Path, default=None, metavar="YAML", help="flat YAML of TrainConfig keys")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, repeatable (e.g. --set tau=0.2 --set stage1_epochs=3)")
    p.add_argument("--max-failures", type=int, default=DEFAULT_MAX_FAILURES, metavar="N",
                   help="restart the worker group up to N times from the latest checkpoint when a worker dies "
                        f"(preemption, OOM kill); default {DEFAULT_MAX_FAILURES}")
    p.add_argument("--experiment", default="vilocal-train", help="MLflow experiment (default vilocal-train)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vilocal_dist.cli import checks
    from vilocal_dist.distributed.train import scaling, train
    from vilocal_dist.distributed.tuning import init_ray
    from vilocal_dist.config import parse_sets
    from vilocal_dist.engines.config import check_stage, load_config
    from vilocal_dist.engines.datasets import training_datasets
    from vilocal_dist.tracking import tracking_uri, ui_command

    if args.stage == "2" and args.encoder is None:
        raise ConfigError("--stage 2 needs --encoder CKPT (a stage-1 checkpoint), or use --stage both")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures}")
    if args.stage in ("joint", "random") and args.encoder is not None:
        raise ConfigError(f"--stage {args.stage} starts from a fresh encoder: drop --encoder")
    overrides = {"model": args.preset} if args.preset else {}
    overrides.update(parse_sets(args.overrides))
    # Two-stage training fine-tunes the encoder in stage 2 by default (the ablation's best variant on
    # unseen methods, README); a config file or --set stage2_encoder_lr_factor=0 (the paper) wins.
    defaults = {"stage2_encoder_lr_factor": FINETUNE_FACTOR} if args.stage in ("both", "2") else {}
    cfg = load_config(args.config, overrides, **defaults)
    check_stage(args.stage, cfg)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    run_name = args.run_name or time.strftime("train-%Y%m%d-%H%M%S")

    data = checks.input_path(args.data, "--data", must_exist=False)  # absolute: Train workers run in other folders
    encoder = checks.checkpoint_path(args.encoder, "--encoder") if args.encoder else None
    if args.gpus_per_worker <= 0:
        raise ConfigError(f"--gpus-per-worker must be > 0, got {args.gpus_per_worker:g}")
    training_datasets(data, cfg, methods)  # a bad --data fails here, before Ray starts
    init_ray(args.address, args.num_cpus)
    use_gpu, _ = scaling(args.workers, args.use_gpu, args.gpus_per_worker)  # an impossible request fails now
    start = time.perf_counter()
    outcomes = train(args.stage, cfg, data, run_name=run_name, methods=methods, workers=args.workers,
                     encoder=encoder, experiment=args.experiment, max_failures=args.max_failures,
                     use_gpu=use_gpu, gpus_per_worker=args.gpus_per_worker, register=True)
    print(f"train: run {run_name!r} finished in {time.perf_counter() - start:.0f} s")
    for o in outcomes:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in o.best_metrics.items() if "/" in k)
        print(f"  stage {o.stage}{' (resumed)' if o.resumed else ''}: best checkpoint {o.checkpoint}/model.pt")
        print(f"    {shown}")
        print(f"    MLflow run {o.mlflow_run_id} (experiment {args.experiment!r})")
        if o.registered_model:
            print(f"    registered as {o.registered_model} (detect/evaluate --model {o.registered_model})")
        if o.mlflow_spool:
            print(f"    not yet on the MLflow server: {o.mlflow_spool} (deliver: vilocal tracking sync)")
    print(f"MLflow store: {tracking_uri()}")
    print(f"MLflow UI:    {ui_command()}")
    print(f"resume/extend: rerun with --run-name {run_name}")
    return 0
