"""The papers' protocols: configs, re-encoding, table layouts (fast), and every tiny variant end to
end on Ray with MLflow (slow; one forged dataset and one trained detector shared through the
experiments' content-keyed cache in a module-wide workdir)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vilocal_dist.errors import ConfigError
from vilocal_dist.experiments import ablation, compression, generalization, inpaint_quality
from vilocal_dist.config import apply_sets as apply_overrides, deep_merge
from vilocal_dist.experiments.registry import get_experiment, list_experiments, resolve_config

# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["generalization", "compression", "ablation", "inpaint-quality"])
@pytest.mark.parametrize("tiny", [False, True])
def test_every_shipped_config_validates(name, tiny):
    spec, raw = resolve_config(name, tiny=tiny)
    assert raw["experiment"] == f"vilocal-{name}"
    if tiny and name != "inpaint-quality":
        assert spec.setup.train.model == "vilocal_tiny"


def test_names_overrides_and_errors():
    assert list_experiments() == ["generalization", "compression", "ablation", "inpaint-quality"]
    assert get_experiment("compression-tiny")[1] is True
    with pytest.raises(ConfigError, match="did you mean 'compression'"):
        get_experiment("compresion")
    spec, _ = resolve_config("generalization", tiny=True, overrides={"train.stage1_epochs": 3, "data.composed": 7})
    assert (spec.setup.train.stage1_epochs, spec.setup.data.composed) == (3, 7)
    assert spec.train_on == (("telea", "ns"),)
    full, _ = resolve_config("generalization")
    assert full.train_on == (("iivi", "intervi"), ("iivi", "flowprop"), ("intervi", "flowprop"))  # every pair
    with pytest.raises(ConfigError, match="did you mean 'composed'"):
        resolve_config("generalization", tiny=True, overrides={"data.composd": 3})
    with pytest.raises(ConfigError, match="not among the forged methods"):
        resolve_config("compression", tiny=True, overrides={"train_on": ["telea", "iivi"]})
    with pytest.raises(ConfigError, match="x265 needs frames of at least 64x64"):
        resolve_config("compression", tiny=True, overrides={"data.size_h": 32})
    resolve_config("compression", tiny=True, overrides={"data.size_h": 32, "codecs": ["x264"], "double_codecs": []})


def test_cli_show_config_applies_overrides(capsys):
    import json

    from vilocal_dist.cli.main import main

    assert main(["experiment", "compression-tiny", "--show-config", "--set", "crfs=[18, 30]", "--set", "eval.gpus=0.5"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["crfs"] == [18, 30] and shown["setup"]["eval"]["gpus"] == 0.5
    assert main(["experiment", "ablation", "--show-config", "--set", "conditions=[]"]) == 2
    assert "conditions must be a non-empty list" in capsys.readouterr().err


def test_merge_and_dotted_overrides():
    base = {"data": {"a": 1, "b": 2}, "crfs": [1, 2]}
    assert deep_merge(base, {"data": {"b": 3}, "crfs": [5]}) == {"data": {"a": 1, "b": 3}, "crfs": [5]}
    assert base["data"]["b"] == 2  # not modified in place
    assert apply_overrides(base, {"data.c": 4, "x.y": 1}) == {"data": {"a": 1, "b": 2, "c": 4}, "crfs": [1, 2], "x": {"y": 1}}
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(base, {"crfs.a": 1})


def test_ablation_conditions_are_checked_when_read():
    spec, _ = resolve_config("ablation", tiny=True)
    assert [(c.name, c.stage, dict(c.train)) for c in spec.conditions] == [
        ("no_hp3d", "both", {"use_hp3d": False}), ("no_contrastive", "joint", {}), ("random_frozen", "random", {}),
        ("full", "both", {}), ("finetune", "both", {"stage2_encoder_lr_factor": 0.1})]
    assert spec.thresholds == (0.3, 0.5, 0.7)
    assert resolve_config("ablation", tiny=True, overrides={"thresholds": [0.9], "eval.threshold": 0.4})[0].thresholds == (0.4, 0.9)
    with pytest.raises(ConfigError, match=r"thresholds must be a non-empty list of numbers in \(0, 1\), got \[1\.5\]"):
        resolve_config("ablation", tiny=True, overrides={"thresholds": [1.5]})
    with pytest.raises(ConfigError, match=r"conditions\[0\]\.stage must be one of both, joint, random, got 'nope'"):
        resolve_config("ablation", tiny=True, overrides={"conditions": [{"name": "x", "stage": "nope"}]})
    with pytest.raises(ConfigError, match=r"conditions\[0\]\.train: stage2_encoder_lr_factor fine-tunes"):
        resolve_config("ablation", tiny=True, overrides={
            "conditions": [{"name": "x", "stage": "joint", "train": {"stage2_encoder_lr_factor": 0.1}}]})
    with pytest.raises(ConfigError, match=r"conditions\[0\]\.train: made_up: unknown training config key"):
        resolve_config("ablation", tiny=True, overrides={"conditions": [{"name": "x", "train": {"made_up": 1}}]})
    with pytest.raises(ConfigError, match=r"conditions\[0\]\.train: tau must be > 0"):
        resolve_config("ablation", tiny=True, overrides={"conditions": [{"name": "x", "train": {"tau": 0}}]})


def test_inpaint_conditions_pack_into_forge_runs_one_method_each():
    spec, _ = resolve_config("inpaint-quality", tiny=True)
    groups = inpaint_quality.forge_groups(spec.conditions)
    assert [[c.name for c in g] for g in groups] == [
        ["iivi", "intervi", "flowprop", "telea", "ns"], ["iivi w/o L_amb"], ["iivi w/o L_stab"]]
    amb = next(c for c in spec.conditions if c.name == "iivi w/o L_amb")
    assert amb.cfg["lambda_a"] == 0.0 and amb.cfg["preset"] == "tiny"  # condition cfg over method_cfgs


# ----------------------------------------------------------------------------- re-encoding


def test_encoder_arguments_map_paper_codecs():
    assert compression.encoder_args("x264", 23) == ("libx264", 23)
    assert compression.encoder_args("x265", 40) == ("libx265", 40)
    assert compression.encoder_args("ffv1", 23) == ("ffv1", None)
    # mpeg4: CRF 0..51 linearly onto its quantiser 1..31
    assert [compression.encoder_args("mpeg4", c)[1] for c in (0, 23, 51)] == [1, 15, 31]
    with pytest.raises(ConfigError, match="unknown codec"):
        compression.encoder_args("h264", 23)


def test_recompress_lossless_is_exact_and_crf51_is_not():
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.inpaint.metrics import psnr

    frames = compose_video(3, 5, (64, 96)).frames
    assert np.array_equal(compression.recompress(frames, [("ffv1", None)]), frames)
    assert np.array_equal(compression.recompress(frames, [("ffv1", None), ("ffv1", None)]), frames)
    coarse = compression.recompress(frames, [("x264", 51)], preset="ultrafast")
    fine = compression.recompress(frames, [("x264", 10)], preset="ultrafast")
    assert coarse.shape == frames.shape and not np.array_equal(coarse, frames)
    assert psnr(coarse, frames) < psnr(fine, frames) - 5  # CRF 51 destroys far more than CRF 10
    twice = compression.recompress(frames, [("x264", 23), ("mpeg4", 23)], preset="ultrafast")
    assert twice.shape == frames.shape and not np.array_equal(twice, frames)


def test_compression_conditions_cover_single_double_and_none():
    spec, _ = resolve_config("compression", tiny=True)
    names = [c["condition"] for c in compression.conditions(spec)]
    assert names[0] == "none"
    assert names.count("ffv1") == 1  # lossless: once, whatever the CRFs
    assert {"x264-crf23", "x264-crf51", "x265-crf51", "mpeg4-crf23"} <= set(names)
    assert [n for n in names if ">" in n] == ["x264>x264", "x264>ffv1", "ffv1>x264", "ffv1>ffv1"]
    assert len(names) == 1 + 3 * 2 + 1 + 4
    double = next(c for c in compression.conditions(spec) if c["condition"] == "x264>ffv1")
    assert double["steps"] == [("x264", 23), ("ffv1", None)]


# ----------------------------------------------------------------------------- tables


def _row(condition, method, seen, iou, f1):
    return {"condition": condition, "test_method": method, "seen": seen, "iou": iou, "f1": f1, "frames": 8, "videos": 1}


def test_generalization_table_stars_seen_methods_and_averages():
    rows = [_row("a+b", "a", True, 0.5, 0.6), _row("a+b", "b", True, 0.7, 0.8), _row("a+b", "c", False, 0.1, None)]
    text = generalization.format_table(rows, ["a", "b", "c"])
    lines = text.splitlines()
    assert lines[0] == "| trained on | a | b | c | seen (mean) | unseen (mean) |"
    assert lines[2] == "| a+b | 0.50/0.60 * | 0.70/0.80 * | 0.10/– | 0.60/0.70 | –/– |"


def test_ablation_table_one_line_per_condition():
    rows = [{**_row("full", m, m != "c", 0.25, 0.5), "label": "ViLocal"} for m in "abc"]
    rows += [{**_row("no_x", m, m != "c", 0.125, None), "label": "w/o X"} for m in "abc"]
    lines = ablation.format_table(rows, ["a", "b", "c"], caption="cap").splitlines()
    assert lines[0] == "| variant | a* | b* | c |"
    assert lines[2] == "| ViLocal | 0.25/0.50 | 0.25/0.50 | 0.25/0.50 |"
    assert lines[3] == "| w/o X | 0.12/– | 0.12/– | 0.12/– |"
    assert lines[-1] == "cap"


def test_ablation_threshold_table_means_seen_and_unseen_per_split():
    def row(condition, method, seen, f1):  # F1 at 0.3/0.5 on test = f1, f1 + 0.1; on train twice that
        return {**_row(condition, method, seen, 0.0, f1), "label": condition.upper(), "test_f1@0.3": f1,
                "test_f1@0.5": f1 + 0.1, "train_f1@0.3": 2 * f1, "train_f1@0.5": 2 * f1 + 0.2}

    rows = [row("full", "a", True, 0.1), row("full", "b", True, 0.3), row("full", "c", False, 0.05)]
    rows += [{**row("no_x", "a", True, 0.1), "test_f1@0.5": None}, row("no_x", "b", True, 0.1),
             {**row("no_x", "c", False, 0.1), "test_f1@0.3": None, "test_f1@0.5": None}]
    lines = ablation.format_threshold_table(rows, [0.3, 0.5]).splitlines()
    assert lines[0] == "| variant | test, seen | test, unseen | train, seen | train, unseen |"
    assert lines[2] == "| FULL | 0.20/0.30 | 0.05/0.15 | 0.40/0.60 | 0.10/0.30 |"
    assert lines[3] == "| NO_X | 0.10/0.20 | –/– | 0.20/0.40 | 0.20/0.40 |"
    assert "thresholds 0.3/0.5" in lines[-1]


def test_ablation_cross_domain_table_and_its_checks():
    rows = [{"condition": "full", "label": "Full", "cross_f1@0.3": 0.2, "cross_f1@0.5": 0.1, "cross_f1px@0.3": 0.25,
             "cross_f1px@0.5": 0.15}]  # fmt: skip
    lines = ablation.format_cross_table(rows, [0.3, 0.5], "bmx-trees forged by iivi", {"f1": 0.07, "iou": 0.04}).splitlines()
    assert lines[0] == "| variant | F1, mean per frame (0.3/0.5) | F1, pixel-pooled (0.3/0.5) |"
    assert lines[2] == "| Full | 0.20/0.10 | 0.25/0.15 |" and "scores F1 0.07" in lines[-1]
    cross = {"sources": ["davis"], "methods": ["iivi"], "method_cfgs": {"iivi": {"preset": "tiny"}}, "size_h": 32}
    spec, _ = resolve_config("ablation", tiny=True, overrides={"cross_domain": cross})
    assert (spec.cross.data.size_h, spec.cross.data.size_w, spec.cross.data.composed) == (32, 96, 0)
    for bad, needle in [({**cross, "methods": []}, "cross_domain.methods"),
                        ({**cross, "method_cfgs": {"telea": {}}}, "cross_domain.method_cfgs"),
                        ({**cross, "method_cfgs": {"iivi": {"made_up": 1}}}, "made_up"),
                        ({**cross, "sources": []}, "cross_domain.sources"), ({**cross, "extra": 1}, "extra"),
                        ({**cross, "size_w": "wide"}, "size_h/size_w must be integers")]:
        with pytest.raises(ConfigError, match=needle):
            resolve_config("ablation", tiny=True, overrides={"cross_domain": bad})


def test_inpaint_quality_converged_share():
    iivi = {"config": {"iters_recon": 100, "iters_reg": 50}, "metrics": {"train/iters_recon": 80, "train/iters": 120}}
    assert inpaint_quality.converged(iivi) == 1.0  # both phases ended on a plateau
    assert inpaint_quality.converged({**iivi, "metrics": {"train/iters_recon": 100, "train/iters": 130}}) == 0.0
    assert inpaint_quality.converged({**iivi, "metrics": {"train/iters_recon": 80, "train/iters": 130}}) == 0.0
    assert inpaint_quality.converged({"config": {"iterations": 10}, "metrics": {"train/updates": 10}}) == 0.0
    assert math.isnan(inpaint_quality.converged({"config": {}, "metrics": {}}))  # telea: no iterations


def test_compression_tables_pivot_codecs_and_double_compression():
    spec, _ = resolve_config("compression", tiny=True)
    rows = [{"condition": c["condition"], "iou": i / 100, "f1": i / 50} for i, c in enumerate(compression.conditions(spec))]
    text = compression.format_tables(rows, spec)
    assert "| codec | CRF 23 | CRF 51 | lossless |" in text
    assert "| none (forged, lossless) | | | 0.00/0.00 |" in text
    assert "| ffv1 |  |  | 0.05/0.10 |" in text  # condition 5
    assert "| x265 | 0.03/0.06 | 0.04/0.08 |  |" in text
    assert "| 1st \\ 2nd | x264 | ffv1 |" in text
    assert "| ffv1 | 0.10/0.20 | 0.11/0.22 |" in text  # ffv1>x264, ffv1>ffv1 (conditions 10, 11)


def test_quality_table_per_protocol_columns():
    cost = {"seconds": 10.0, "iterations": 300.0}
    rows = [{"condition": "iivi", "type": "internal", "protocol": "fixed", "psnr": 30.123, "ssim": 0.9444, "tc": 35.0,
             **cost, "converged": 1.0},
            {"condition": "iivi", "type": "internal", "protocol": "object", "psnr": 31.0, "ssim": 0.95, "tc": math.nan,
             "seconds": 20.0, "iterations": 500.0, "converged": 0.5},
            {"condition": "telea", "type": "classical", "protocol": "fixed", "psnr": 25.0, "ssim": 0.9, "tc": 30.0,
             "seconds": 0.1, "iterations": math.nan, "converged": math.nan}]  # fmt: skip
    lines = inpaint_quality.format_table(rows).splitlines()
    assert lines[0] == ("| method | type | fixed masks PSNR | fixed masks SSIM | fixed masks TC | object masks PSNR "
                        "| object masks SSIM | object masks TC | time (s) | its (converged) |")
    assert lines[2] == "| iivi | internal | 30.12 | 0.944 | 35.00 | 31.00 | 0.950 | – | 15.0 | 400 (75%) |"
    assert lines[3] == "| telea | classical | 25.00 | 0.900 | 30.00 | – | – | – | 0.1 | – |"


# ----------------------------------------------------------------------------- end to end (tiny)


@pytest.fixture(scope="module")
def exp_home(tmp_path_factory, ray_local):
    """One VILOCAL_HOME (MLflow store, Ray storage, experiments workdir) for the whole module, so the
    tiny protocols share the forged dataset and the trained detector through the workdir cache."""
    home = tmp_path_factory.mktemp("exp-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VILOCAL_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("VILOCAL_STORAGE", raising=False)
        yield home


def _runs(experiment: str):
    import mlflow

    from vilocal_dist.tracking.setup import tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def _check_recorded(result, artifacts: set[str], conditions: set[str]):
    client, runs = _runs(result.experiment)
    parent = next(r for r in runs if r.info.run_id == result.run_id)
    assert parent.info.status == "FINISHED" and "wall_seconds" in parent.data.metrics
    names = {a.path for a in client.list_artifacts(result.run_id)} | {
        a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"table.csv", "table.md", "table.json", "config.json"} | artifacts <= names
    csv_text = (result.results_dir / "table.csv").read_text()
    assert csv_text.splitlines()[0].startswith("condition,")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.run_id
                and r.data.tags.get("vilocal.role") == "condition"]
    assert {c.info.run_name for c in children} == conditions
    assert all(c.info.status == "FINISHED" for c in children)
    return children


def _in_unit(value):
    return value is not None and 0.0 <= value <= 1.0


@pytest.mark.slow
@pytest.mark.ray
def test_generalization_tiny(exp_home):
    from vilocal_dist.experiments import run_experiment

    result = run_experiment("generalization", tiny=True)
    assert [(r["test_method"], r["seen"]) for r in result.rows] == [("telea", True), ("ns", True), ("flowprop", False)]
    assert all(_in_unit(r["f1"]) and _in_unit(r["iou"]) and r["frames"] == 16 for r in result.rows)  # 2 videos × 8
    assert result.markdown.splitlines()[0].startswith("| trained on | telea | ns | flowprop |")
    assert "Predicting every pixel forged scores" in result.markdown  # the floor, for reading the numbers
    children = _check_recorded(result, {"plots/f1_by_method.png"}, {"telea+ns"})
    assert "test/unseen/f1" in children[0].data.metrics
    _, runs = _runs(result.experiment)  # the two training stages are filed under the parent
    stages = [r for r in runs if r.data.tags.get("vilocal.condition") == "telea+ns"]
    assert len(stages) in (0, 2) and all(r.data.tags["mlflow.parentRunId"] == result.run_id for r in stages)


@pytest.mark.slow
@pytest.mark.ray
def test_compression_tiny(exp_home):
    from vilocal_dist.experiments import run_experiment

    result = run_experiment("compression", tiny=True)
    rows = {r["condition"]: r for r in result.rows}
    assert len(rows) == 12 and all(_in_unit(r["f1"]) and _in_unit(r["iou"]) for r in rows.values())
    # Lossless re-encoding gives the detector the very same pixels: the very same scores.
    assert rows["ffv1"]["f1"] == rows["none"]["f1"] and rows["ffv1>ffv1"]["iou"] == rows["none"]["iou"]
    assert rows["ffv1"]["psnr_db"] == 100.0
    assert rows["x264-crf51"]["psnr_db"] < rows["x264-crf23"]["psnr_db"]
    assert "### Double compression at CRF 23" in result.markdown
    _check_recorded(result, {"plots/f1_vs_crf.png"}, set(rows))
    # Same data, same training config as generalization-tiny: one detector in the cache, whatever ran first.
    assert len(list((exp_home / "experiments" / "models").iterdir())) == 1


@pytest.mark.slow
@pytest.mark.ray
def test_ablation_tiny(exp_home):
    """Every variant end to end; the controls really are what they claim: the random encoder is its
    initialisation, untouched, and the fine-tuned one started from full's stage-1 encoder and moved."""
    import torch

    from vilocal_dist.engines.checkpoint import load_checkpoint
    from vilocal_dist.engines.loop import fresh_model
    from vilocal_dist.experiments import run_experiment

    # Cross-domain: a sequence the detectors never trained on (a DAVIS-layout folder), forged by IIVI,
    # which no detector saw.
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.video.io import write_png_folder

    footage = exp_home / "footage"
    clip = compose_video(77, 6, (64, 96))
    write_png_folder(footage / "Annotations" / "480p" / "street", clip.masks)
    write_png_folder(footage / "JPEGImages" / "480p" / "street", clip.frames)
    cross = {"sources": [str(footage)], "methods": ["iivi"],
             "method_cfgs": {"iivi": {"preset": "tiny", "iters_recon": 6, "iters_reg": 0}}}
    spec, _ = resolve_config("ablation", tiny=True, overrides={"cross_domain": cross})
    assert spec.cross.methods == ("iivi",) and spec.cross.data.sources == (str(footage),)
    result = run_experiment("ablation", tiny=True, overrides={"cross_domain": cross})
    names = [c.name for c in spec.conditions]
    assert names == ["no_hp3d", "no_contrastive", "random_frozen", "full", "finetune"]
    assert [r["condition"] for r in result.rows] == [n for n in names for _ in range(3)]
    extra = [f"{split}_f1@{t}" for split in ("test", "train") for t in ("0.3", "0.5", "0.7")]
    for row in result.rows:
        assert _in_unit(row["f1"]) and _in_unit(row["iou"]) and all(_in_unit(row[c]) for c in extra)
        assert row["test_f1@0.5"] == row["f1"]  # the main table is the test split at eval.threshold
        assert all(_in_unit(row[f"cross_{k}@{t}"]) for k in ("f1", "f1px") for t in ("0.3", "0.5", "0.7"))
    assert ",".join(extra) in (result.results_dir / "table.csv").read_text().splitlines()[0]
    assert "| variant | test, seen | test, unseen | train, seen | train, unseen |" in result.markdown
    assert "Cross-domain: footage forged by iivi" in result.markdown
    children = {c.info.run_name: c for c in _check_recorded(result, {"plots/f1_by_method.png"}, set(names))}
    assert "train/unseen/f1_at_0.7" in children["full"].data.metrics
    assert {"cross/f1_at_0.5", "cross/f1_pixel_at_0.5"} <= set(children["random_frozen"].data.metrics)
    assert children["finetune"].data.params["stage1_shared_with"] == "full"
    client, _ = _runs(result.experiment)
    finetune_runs = children["finetune"].data.tags["vilocal.train_runs"].split(",")
    assert len(finetune_runs) == 1  # stage 2 only, from full's stage-1 checkpoint
    assert load_checkpoint(client.get_run(finetune_runs[0]).data.params["encoder"])["stage"] == 1

    def encoder(name):
        state = load_checkpoint(children[name].data.params["model"])["model_state"]
        return {k: v for k, v in state.items() if k.startswith("encoder.")}

    init = fresh_model(spec.setup.train).state_dict()
    assert all(torch.equal(v, init[k]) for k, v in encoder("random_frozen").items())  # weights and BN statistics
    full, finetune = encoder("full"), encoder("finetune")
    assert any(not torch.equal(v, init[k]) for k, v in full.items())  # stage 1 trained it
    assert any(v.is_floating_point() and not torch.equal(v, full[k]) for k, v in finetune.items())
    # Stage 1 logs the similarities the contrastive loss computes, per epoch, to MLflow.
    stage1 = client.get_run(children["no_hp3d"].data.tags["vilocal.train_runs"].split(",")[0])
    assert stage1.data.tags["vilocal.stage"] == "1"
    assert all(-1.0 <= stage1.data.metrics[k] <= 1.0 for k in ("train/pos_sim", "train/neg_sim", "val/pos_sim",
                                                              "val/neg_sim"))


@pytest.mark.slow
@pytest.mark.ray
def test_inpaint_quality_tiny(exp_home):
    from vilocal_dist.experiments import run_experiment

    spec, _ = resolve_config("inpaint-quality", tiny=True)
    result = run_experiment("inpaint-quality", tiny=True)
    names = [c.name for c in spec.conditions]
    assert [(r["condition"], r["protocol"]) for r in result.rows] == [(n, p) for n in names for p in ("fixed", "object")]
    for row in result.rows:
        assert 5.0 < row["psnr"] < 100.0 and 0.0 < row["ssim"] <= 1.0 and row["videos"] == 1
        assert 0.0 < row["ssim_hole"] < row["ssim"]  # the hole is where the errors are
    children = _check_recorded(result, {"plots/quality.png", "plots/curves.png", "per_video.csv", "per_video.md",
                                        "curves.json"}, set(names))  # fmt: skip
    assert all("fixed/psnr" in c.data.metrics and "object/tc" in c.data.metrics for c in children)
    rows = {(r["condition"], r["protocol"]): r for r in result.rows}
    assert all(r["seconds"] > 0 for r in result.rows)  # every method's wall time per video
    assert rows[("iivi", "object")]["iterations"] == 6 and rows[("intervi", "fixed")]["iterations"] == 6
    curves = {c["condition"] for c in json.loads((result.results_dir / "curves.json").read_text())}
    assert {"iivi", "iivi w/o L_amb", "intervi"} <= curves and "telea" not in curves
    # The forge's run of each video holds the learning curve as stepped metrics, hole PSNR included.
    client, _ = _runs("vilocal-forge")
    iivi_runs = [r for r in _runs("vilocal-forge")[1] if r.data.params.get("method") == "iivi"]
    assert iivi_runs
    history = client.get_metric_history(iivi_runs[0].info.run_id, "curve/true_hole_psnr")
    assert [m.step for m in history] == [4, 6] and all(5.0 < m.value < 100.0 for m in history)


def test_demo_presets_are_experiment_specs_checked_once():
    from vilocal_dist.experiments.demo import resolve_preset

    default = resolve_preset("default")
    assert (default.setup.methods, default.train_on, default.unseen) == (("telea", "iivi", "flowprop"), ("telea", "iivi"), ("flowprop",))
    assert (default.setup.train.model, default.setup.train.alpha, default.setup.workers) == ("vilocal_small", 0.75, 2)
    smoke = resolve_preset("smoke", {"workers": 1, "sweep": "none", "train.stage2_epochs": 2})
    assert (smoke.setup.data.composed, smoke.unseen, smoke.sweep, smoke.setup.train.stage2_epochs) == (4, ("ns",), "none", 2)
    with pytest.raises(ConfigError, match="did you mean 'smoke'"):
        resolve_preset("smok")
    with pytest.raises(ConfigError, match=r"demo-smoke\.yaml: train: alpah: unknown training config key \(did you mean 'alpha'\?\)"):
        resolve_preset("smoke", {"train.alpah": 0.5})
    with pytest.raises(ConfigError, match="train_on: 'iivi' is not among the forged methods"):
        resolve_preset("smoke", {"train_on": ["iivi"]})


def test_demo_names_the_iivi_budget_it_used():
    from vilocal_dist.experiments.demo import budget_note, resolve_preset

    quality = {"iivi": {"hole_psnr": 14.25, "seconds": 6.1, "iterations": 60.0},
               "telea": {"hole_psnr": 20.3, "seconds": 0.05, "iterations": math.nan}}  # fmt: skip
    note = budget_note(resolve_preset("default"), quality)
    assert "iivi 14.2 dB (6.1 s/video), telea 20.3 dB" in note and "budget of 60 iterations per video" in note
    assert "budget" not in budget_note(resolve_preset("smoke"), {"telea": quality["telea"]})  # no internal method
