"""The forged-dataset factory: planning (no Ray) and the Tune fan-out (one trial per video × method)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vilocal_dist.cli.forge import method_overrides
from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs
from vilocal_dist.errors import ConfigError

TINY = dict(composed=3, frames=4, size=(32, 48))


def test_plan_assigns_one_split_per_source_video():
    videos = [(f"v{i}", f"composed:{i}:4:32x48") for i in range(40)]
    jobs = plan_jobs(videos, ["telea", "ns"], test_fraction=0.5, seed=3)
    assert len(jobs) == 80
    by_video: dict[str, set[str]] = {}
    for job in jobs:
        by_video.setdefault(job["video"], set()).add(job["split"])
        assert job["id"] == f"{job['video']}__{job['method']}"
    assert all(len(splits) == 1 for splits in by_video.values())  # never split a scene
    assert {s for splits in by_video.values() for s in splits} == {"train", "test"}


def test_composed_sources_and_method_options():
    videos = expand_sources([], composed=2, frames=4, size=(32, 48), seed=5)
    assert videos == [("composed-5", "composed:5:4:32x48"), ("composed-6", "composed:6:4:32x48")]
    assert method_overrides(["telea.radius=5", "iivi.preset=tiny"]) == {"telea": {"radius": 5}, "iivi": {"preset": "tiny"}}
    with pytest.raises(ConfigError, match="METHOD.KEY"):
        method_overrides(["radius=5"])
    with pytest.raises(ConfigError, match="not in --methods"):
        plan_jobs(videos, ["telea"], method_cfgs={"ns": {"radius": 2}})
    with pytest.raises(ConfigError, match="unknown inpainting method"):
        plan_jobs(videos, ["telae"])


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _children(experiment: str) -> tuple[list, list]:
    import mlflow

    from vilocal_dist.tracking.setup import tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags], [r for r in runs if "mlflow.parentRunId" not in r.data.tags]


@pytest.mark.ray
def test_forge_six_videos_then_rerun_does_nothing(ray_local, mlflow_home, tmp_path):
    from vilocal_dist.data.manifest import ForgedDataset

    out = tmp_path / "forged"
    jobs = plan_jobs(expand_sources([], **TINY), ["telea", "ns"], method_cfgs={"ns": {"radius": 2}})
    summary = forge(jobs, ForgeOptions(out=str(out), retries=1, max_concurrent=2))
    assert (summary.planned, summary.skipped, summary.ran, summary.failed, summary.complete) == (6, 0, 6, [], True)

    records = ForgedDataset(out).records()
    assert sorted(r["id"] for r in records) == sorted(j["id"] for j in jobs)
    for record in records:
        video = out / record["path"]
        assert len(list((video / "frames").glob("*.png"))) == 4 == len(list((video / "masks").glob("*.png")))
        assert json.loads((video / "provenance.json").read_text())["id"] == record["id"]
        assert record["seed"] == 0 and record["versions"]
    assert next(r for r in records if r["method"] == "ns")["config"]["radius"] == 2

    children, parents = _children("vilocal-forge")
    assert len(parents) == 1 and len(children) == 6
    assert {(c.data.params["video"], c.data.params["method"]) for c in children} == {(j["video"], j["method"]) for j in jobs}
    assert all(c.info.status == "FINISHED" and "seconds" in c.data.metrics for c in children)
    assert parents[0].info.status == "FINISHED"

    before = _snapshot(out)
    again = forge(jobs, ForgeOptions(out=str(out), retries=0, max_concurrent=2))
    assert (again.skipped, again.ran) == (6, 0)
    assert _snapshot(out) == before  # no file touched, the manifest unchanged
    assert len(_children("vilocal-forge")[0]) == 6  # no new trials


@pytest.mark.ray
def test_interrupted_forge_resumes_without_redoing(ray_local, mlflow_home, tmp_path):
    from vilocal_dist.data.manifest import ForgedDataset
    from vilocal_dist.distributed.tuning import set_session_budget

    out = tmp_path / "forged"
    jobs = plan_jobs(expand_sources([], **{**TINY, "composed": 2}), ["telea", "ns"])
    opts = ForgeOptions(out=str(out), retries=0, max_concurrent=1)
    set_session_budget(1)  # like Ctrl-C after the first video
    first = forge(jobs, opts)
    done_first = ForgedDataset(out).completed_ids()
    assert len(done_first) == 1 and first.ran == 1 and not first.complete
    kept = {k: v for k, v in _snapshot(out).items() if any(k.startswith(f"videos/{i}/") for i in done_first)}

    second = forge(jobs, opts)  # the same command again: Tuner.restore of the same experiment
    assert second.experiment_path == first.experiment_path
    assert second.skipped == 1 and second.ran == 4 and second.complete  # the restored grid: all four
    assert ForgedDataset(out).completed_ids() == {j["id"] for j in jobs}
    assert {k: v for k, v in _snapshot(out).items() if k in kept} == kept  # the finished video untouched
    children, parents = _children("vilocal-forge")
    assert len(parents) == 1  # the resumed forge reopened its parent run
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
