"""Plain PyTorch loops (no Ray, no MLflow): what the launchers distribute and the CLI calls.

    config      TrainConfig: both stages' settings, flat scalars, YAML + --set overrides
    stage1      encoder + pixel contrastive loss (τ)      train_stage1(cfg, train_ds, val_ds, ...)
    stage2      frozen encoder + decoder + focal (α, γ)   train_stage2(cfg, train_ds, val_ds, model=...)
    loop        Runtime hooks, cosine schedule, DDP-aware loaders shared by both stages
    checkpoint  one model.pt: model name + config, weights, train config, stage, epoch, metrics
    datasets    train / validation clip datasets from a forged dataset (held out by source video)
    metrics     MaskEvaluator: per-frame pixel F1 / IoU, pooled, per video, per method
    evaluate    evaluate_checkpoint(ckpt, data, split=...)
    detect      detect_video(video, ckpt, out_dir): streaming maps, masks, overlay, report.json
    forge       forge_video / forge_local: inpaint a source's objects into a forged dataset
    overlay     red-tint overlays and frame | truth | prediction panels
"""
