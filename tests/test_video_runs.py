"""Per-video MLflow runs of sharded forge trials (driver side, a real SQLite store, no Ray needed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from vilocal_dist.distributed.forge import RECORD_KEY, _job_params, _trial_jobs, reported_videos


def _job(i: int) -> dict:
    return {"id": f"v{i}__telea", "video": f"v{i}", "method": "telea", "split": "train", "source": f"composed:{i}",
            "cfg": {}}


def _result(jobs: list[dict]) -> dict:
    items = [{"record": {"id": j["id"], "frames": 4, "metrics": {"hole_px": 12}}, "seconds": 0.5} for j in jobs]
    return {RECORD_KEY: json.dumps(items), "seconds": 0.5 * len(jobs)}


def _runs(experiment: str) -> list:
    import mlflow

    from vilocal_dist.tracking.setup import tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


@pytest.fixture
def logger(mlflow_home, tmp_path):
    import mlflow

    from vilocal_dist.distributed.video_runs import VideoRunLogger
    from vilocal_dist.tracking.setup import ensure_experiment, tracking_uri

    parent = mlflow.MlflowClient(tracking_uri=tracking_uri()).create_run(ensure_experiment("forge-test")).info.run_id
    return VideoRunLogger(experiment="forge-test", parent_run_id=parent, videos_of=reported_videos,
                          params_of=_job_params, jobs_of=_trial_jobs)


def test_a_run_per_video_once_and_failed_runs_for_what_a_dead_shard_never_forged(logger, tmp_path):
    jobs = [_job(i) for i in range(5)]
    ok = SimpleNamespace(trial_id="t1", config={"jobs": jobs[:3]}, num_failures=0, error_file=None)
    logger.on_trial_result(0, [], ok, _result(jobs[:2]))
    logger.on_trial_result(0, [], ok, _result(jobs[:3]))  # a retried shard reports its finished videos again
    error = tmp_path / "error.txt"
    error.write_text("Traceback …\nValueError: a corrupt frame")
    dead = SimpleNamespace(trial_id="t2", config={"jobs": jobs[3:]}, num_failures=2, error_file=str(error))
    logger.on_trial_result(0, [], dead, _result(jobs[3:4]))
    logger.on_trial_error(0, [], dead)
    logger.on_experiment_end([])

    runs = {r.info.run_name: r for r in _runs("forge-test")}
    assert sorted(runs) == [j["id"] for j in jobs]  # one run each, no duplicate for the repeated report
    assert [runs[j["id"]].info.status for j in jobs] == ["FINISHED"] * 4 + ["FAILED"]
    first = runs["v0__telea"]
    assert first.data.params["video"] == "v0" and first.data.metrics == {"seconds": 0.5, "frames": 4.0, "hole_px": 12.0}
    assert "corrupt frame" in runs["v4__telea"].data.tags["vilocal.error"]
    assert runs["v4__telea"].data.tags["tune.retries"] == "2"


def test_backfill_writes_only_the_listed_videos_without_a_finished_run(logger):
    jobs = [_job(i) for i in range(4)]
    trial = SimpleNamespace(trial_id="t1", config={"jobs": jobs}, num_failures=0, error_file=None)
    logger.on_trial_result(0, [], trial, _result(jobs[:2]))
    logger.on_experiment_end([])
    listed = [{"id": j["id"], "metrics": {"hole_px": 3}} for j in jobs[:3]] + [{"id": "other__ns"}]  # another plan's
    assert logger.backfill(listed, {j["id"]: j for j in jobs}) == 1
    assert logger.backfill(listed, {j["id"]: j for j in jobs}) == 0  # idempotent
    runs = {r.info.run_name: r for r in _runs("forge-test")}
    assert sorted(runs) == ["v0__telea", "v1__telea", "v2__telea"]
    assert runs["v2__telea"].data.tags["vilocal.backfilled"] == "true"


def test_learning_curves_become_stepped_metrics_and_records_stay_small():
    from vilocal_dist.distributed.video_runs import curve_steps, record_metrics
    from vilocal_dist.engines.forge import CURVE_POINTS, thin_curve

    history = [{"iteration": float(i), "seconds": i / 10, "selfval/psnr": 20 + i / 100, "phase": 1.0} for i in range(1, 201)]
    history[3]["true/hole_psnr"] = float("inf")  # an exact fill: not a metric value
    thin = thin_curve(history)
    assert len(thin) == CURVE_POINTS and thin[0] is history[0] and thin[-1] is history[-1]
    assert thin_curve(history[:5]) == history[:5]
    steps = curve_steps(history[:4])
    assert [s for s, _ in steps] == [1, 2, 3, 4]
    assert steps[0][1] == {"curve/selfval_psnr": 20.01, "curve/seconds": 0.1} and "curve/true_hole_psnr" not in steps[3][1]
    record = {"seconds": 1.5, "metrics": {"train/iters": 30, "selfval/psnr": float("inf"), "ok": True}}
    assert record_metrics(record) == {"train/iters": 30.0, "method_seconds": 1.5}
