"""Sweeps on a local Ray: MLflow parent/child runs that always end, the demo spec, resume."""

from __future__ import annotations

import pytest

from vilocal_dist.paths import REPO_ROOT

DEMO = REPO_ROOT / "sweeps" / "demo.yaml"
# The demo's λ sweep shrunk to seconds: one 4-frame composed video, 2+2 IIVI iterations.
TINY_LAMBDA = {
    "num_samples": 2,
    "data.composed": 1,
    "data.frames": 4,
    "data.size": "32x48",
    "base.iters_recon": 2,
    "base.iters_reg": 2,
    "resources.max_concurrent": 2,
}


def _runs(experiment: str) -> tuple[list, list]:
    """(child runs, parent runs) of an experiment."""
    import mlflow

    from vilocal_dist.tracking.setup import tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return children, [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


def _artifacts(run_id: str, path: str | None = None) -> set[str]:
    import mlflow

    from vilocal_dist.tracking.setup import tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifacts(run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.ray
def test_child_runs_end_for_finished_asha_stopped_and_failed_trials(ray_local, mlflow_home):
    import mlflow
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from vilocal_dist.distributed.tune_mlflow import MLflowTrialLogger
    from vilocal_dist.distributed.tuning import parent_run
    from vilocal_dist.tracking.setup import storage_path, tracking_uri

    def trainable(config):
        if config["x"] < 0:
            raise RuntimeError("boom")
        for i in range(1, 5):
            tune.report({"score": config["x"] * i, "flag": True})

    with parent_run("test-asha", "parent", path="asha", resume=False, params={"n": 4}) as run:
        logger = MLflowTrialLogger(experiment="test-asha", parent_run_id=run.info.run_id)
        tune.Tuner(
            trainable,
            # Run one at a time, best first: ASHA then stops the later, worse trials at rung 1.
            param_space={"x": tune.grid_search([-1.0, 2.0, 0.2, 0.1])},
            tune_config=tune.TuneConfig(
                metric="score", mode="max", max_concurrent_trials=1,
                scheduler=ASHAScheduler(grace_period=1, reduction_factor=2, max_t=4),
            ),  # fmt: skip
            run_config=tune.RunConfig(name="asha", storage_path=storage_path(), callbacks=[logger], verbose=0),
        ).fit()

    children, parents = _runs("test-asha")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    by_x = {float(c.data.params["x"]): c for c in children}
    assert sorted(by_x) == [-1.0, 0.1, 0.2, 2.0]
    assert by_x[-1.0].info.status == "FAILED" and "error.txt" in _artifacts(by_x[-1.0].info.run_id)
    assert all(by_x[x].info.status == "FINISHED" for x in (0.1, 0.2, 2.0))  # ASHA-stopped too
    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    history = client.get_metric_history(by_x[2.0].info.run_id, "score")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 2.0), (2, 4.0), (3, 6.0), (4, 8.0)]
    stopped = [x for x in (0.2, 0.1) if len(client.get_metric_history(by_x[x].info.run_id, "score")) < 4]
    assert stopped  # early-stopped trials still ended FINISHED, not RUNNING
    assert "flag" not in by_x[2.0].data.metrics  # bools are not metrics


@pytest.mark.ray
def test_demo_lambda_sweep_logs_parent_and_children(ray_local, mlflow_home):
    from vilocal_dist.distributed.sweep import run_spec_file

    (outcome,) = run_spec_file(DEMO, TINY_LAMBDA, only=["lambda"])
    assert outcome.complete and len(outcome.rows) == 2
    children, parents = _runs("vilocal-sweep-inpaint")
    assert len(parents) == 1 and len(children) == 2
    assert {r.info.status for r in children + parents} == {"FINISHED"}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"lambda_a", "lambda_s", "video"} <= set(child.data.params)
        assert {"selfval/psnr", "true/hole_psnr"} <= set(child.data.metrics)
    artifacts = _artifacts(parents[0].info.run_id)
    assert {"best_config.json", "results.csv", "results.md", "plots/parallel_coordinates.png",
            "plots/selfval_psnr_vs_lambda_a.png", "plots/selfval_psnr_vs_lambda_s.png"} <= artifacts  # fmt: skip
    assert outcome.best["selfval/psnr"] == max(r["selfval/psnr"] for r in outcome.rows)


@pytest.mark.ray
def test_interrupted_sweep_resumes_without_redoing_trials(ray_local, mlflow_home):
    from vilocal_dist.distributed.sweep import run_spec_file
    from vilocal_dist.errors import ConfigError

    overrides = {**TINY_LAMBDA, "num_samples": 3, "resources.max_concurrent": 1}
    (first,) = run_spec_file(DEMO, overrides, only=["lambda"], stop_after=1)
    assert not first.complete
    done_first = {r["trial_id"] for r in first.rows if r.get("selfval/psnr") is not None}
    assert len(done_first) == 1
    with pytest.raises(ConfigError, match="--resume"):
        run_spec_file(DEMO, overrides, only=["lambda"])  # never mixes a new sweep into the old one

    (second,) = run_spec_file(DEMO, overrides, only=["lambda"], resume=True)
    assert second.complete and len(second.rows) == 3
    assert done_first <= {r["trial_id"] for r in second.rows}
    children, parents = _runs("vilocal-sweep-inpaint")
    assert len(parents) == 1  # --resume reopened the sweep's parent run
    assert len(children) == 3  # the finished trial was not run again
    assert {r.info.status for r in children + parents} == {"FINISHED"}


def test_auto_lambda_grid_and_agreement_figure():
    from vilocal_dist.distributed.auto_lambda import agreement, grid_configs

    assert grid_configs([(0, 0.2)]) == [{"lambda_a": 0.0, "lambda_s": 0.2}]
    assert grid_configs({"lambda_a": [0.1, 0.2], "lambda_s": [1.0]}) == [
        {"lambda_a": 0.1, "lambda_s": 1.0}, {"lambda_a": 0.2, "lambda_s": 1.0}]  # fmt: skip
    s, t = "selfval/psnr", "true/hole_psnr"
    video_a = [{s: 30.0, t: 20.0}, {s: 29.0, t: 20.2}]  # chosen 0.2 dB below the best: agrees
    video_b = [{s: 30.0, t: 20.0}, {s: 29.0, t: 21.0}]  # 1 dB below: does not
    video_c = [{s: float("nan"), t: 25.0}]  # nothing scored: not counted
    assert agreement([video_a, video_b, video_c], tolerance_db=0.3) == (1, 2)


@pytest.mark.ray
def test_auto_lambda_keeps_the_best_selfval_result(ray_local, mlflow_home):
    import numpy as np

    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.distributed.auto_lambda import auto_lambda

    video = compose_video(3, 4, (32, 48))
    kwargs = dict(grid=[(0.0, 0.0), (0.5, 1.0)], base_cfg={"preset": "tiny", "random_vgg": True, "iters_recon": 2,
                  "iters_reg": 2, "dilate": 2}, gt_frames=video.backgrounds, max_concurrent=2, verbose=0)  # fmt: skip
    best, rows = auto_lambda(video.frames, video.masks, **kwargs)
    assert len(rows) == 2 and rows[0]["selfval/psnr"] >= rows[1]["selfval/psnr"]
    assert all("true/hole_psnr" in r for r in rows)
    assert (best.config["lambda_a"], best.config["lambda_s"]) == (rows[0]["lambda_a"], rows[0]["lambda_s"])
    assert best.metrics["selfval/psnr"] == rows[0]["selfval/psnr"]
    assert best.config["preset"] == "tiny" and best.config["method"] == "iivi"
    assert np.array_equal(best.frames[~video.masks], video.frames[~video.masks])  # composited
    again, rows_again = auto_lambda(video.frames, video.masks, **kwargs)  # restored, not refitted
    assert np.array_equal(again.frames, best.frames) and rows_again == rows
    children, parents = _runs("vilocal-auto-lambda")
    assert len(children) == 2 and len(parents) == 1


@pytest.mark.ray
@pytest.mark.slow
def test_demo_tau_sweep_trains_both_stages_in_each_trial(ray_local, mlflow_home):
    from vilocal_dist.distributed.sweep import run_spec_file

    tiny = {"num_samples": 1, "data.forge.composed": 3, "data.forge.frames": 6, "data.forge.size": "32x48",
            "base.size_h": 32, "base.size_w": 48, "base.contrast_samples": 64, "base.max_train_clips": 4,
            "base.max_val_clips": 2}  # fmt: skip
    (outcome,) = run_spec_file(DEMO, tiny, only=["tau"])
    assert outcome.complete and len(outcome.rows) == 1
    (row,) = outcome.rows
    assert "val/f1" in row and "stage1/val/loss" in row and row["iterations"] == 2  # stage-2 epochs
    children, parents = _runs("vilocal-sweep-train")
    assert len(parents) == 1 and len(children) == 1
    assert {r.info.status for r in children + parents} == {"FINISHED"}
    _, stage_runs = _runs("vilocal-train")  # train_stage's own runs, named after the trial id
    assert sorted(r.info.run_name for r in stage_runs) == [f"demo-tau-{row['trial_id']}-stage{i}" for i in (1, 2)]
    assert all(r.info.status == "FINISHED" for r in stage_runs)
    assert {"best_config.json", "results.csv", "plots/parallel_coordinates.png"} <= _artifacts(parents[0].info.run_id)
