"""The forge fan-out at N = 100 through the scale benchmark: exactly once, and a killed forge resumed.

The large cases (1,000 and 10,000 videos) are benchmarks (`vilocal bench --only scale`), not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.ray
def test_hundred_videos_exactly_once_and_a_killed_forge_resumes_without_redoing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vilocal_dist.bench.scale", "--n", "100", "--control-n", "0", "--server-n", "0",
         "--resume-n", "100", "--json", "--plot", str(tmp_path / "scale.png")],
        capture_output=True, text=True, timeout=800, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    plain, resumed = report["cases"]
    assert (plain["resume"], resumed["resume"]) == (False, True)
    for case in (plain, resumed):
        assert case["n"] == 100 and case["failed"] == 0
        # every (video, method) once in the manifest and once FINISHED in MLflow
        assert case["manifest_records"] == 100 and case["manifest_exactly_once"], case
        assert case["mlflow_exactly_once"], case
        assert case["videos_per_trial"] > 1 and case["trials"] < 100  # 100 videos are sharded
        assert case["overhead_per_video_s"] > 0 and case["driver_peak_rss_mib"] > 0
        assert case["tune_state_writes"] > 0 and case["manifest_publishes"] > 0
    assert plain["forged"] == 100 and plain["mlflow_runs_written"] == 100

    # Killed once half the videos were listed: nothing complete is redone, the rest is forged.
    assert 50 <= resumed["killed_at_listed"] < 100 and resumed["killed_processes"] > 1
    assert resumed["redone"] == 0 and resumed["stored_at_kill"] >= resumed["killed_at_listed"]
    assert resumed["forged"] == 100 - resumed["killed_at_listed"]
    assert resumed["restore_s"] is not None  # the interrupted Tune experiment was restored
    assert (tmp_path / "scale.png").stat().st_size > 0
