"""The console contract, through the real CLI in a subprocess: a smoke forge prints a few lines
(phase, bar, summary), no Ray Tune tables and no Ray worker output; the full log goes to the
file it names; `--verbose` brings Tune's output back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vilocal_dist.paths import REPO_ROOT

pytestmark = pytest.mark.ray

#: What Ray Tune's trial tables and Ray's worker echo look like.
TUNE_OR_RAY_NOISE = ("Trial ", "╭", "Configuration for experiment", "View detailed results", "(pid=",
                     "Number of trials", "Current time:", "Started a local Ray instance")


def _vilocal(args: list[str], home: Path) -> tuple[int, list[str], str]:
    env = {**os.environ, "VILOCAL_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("VILOCAL_STORAGE", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "vilocal_dist", *args], capture_output=True, text=True, env=env,
                          timeout=600)
    lines = (proc.stdout + proc.stderr).split("\n")
    return proc.returncode, [line for line in lines if line.strip()], proc.stdout


def _forge(home: Path, *extra: str) -> list[str]:
    return ["forge", "--composed", "2", "--frames", "4", "--size", "32x48", "--methods", "telea",
            "--out", str(home / "forged"), "--num-cpus", "2", *extra]


@pytest.mark.slow  # a Ray start and two tiny trials: ~40 s on 2 idle cores
def test_a_smoke_forge_prints_phases_a_bar_and_a_summary_only(tmp_path):
    home = tmp_path / "home"
    code, lines, stdout = _vilocal(_forge(home), home)
    assert code == 0, "\n".join(lines)
    assert len(lines) <= 8, "\n".join(lines)
    noise = [line for line in lines if any(mark in line for mark in TUNE_OR_RAY_NOISE)]
    assert not noise, noise
    log_lines = [line for line in lines if line.startswith("vilocal forge · full log: ")]
    assert len(log_lines) == 1, lines
    log = Path(log_lines[0].split("full log: ", 1)[1])
    assert log.parent == home / "logs" and log.is_file()
    assert any(line.startswith("forge: 2 forged videos to make") for line in lines)
    assert any("forge: 100%" in line and "2/2" in line for line in lines)  # the trial bar, finished
    assert "forge: 2 videos planned, 0 already complete, 2 forged in this run (1 per trial), 0 failed" in stdout
    text = log.read_text()
    assert "Ray worker logs: " in text and "Started a local Ray instance" in text  # what the console left out

    # --verbose: Tune's own report comes back (and a rerun of a finished forge starts no Tuner:
    # a second plan is needed).
    code, lines, _ = _vilocal(["--verbose", *_forge(home, "--seed", "1")], home)
    assert code == 0 and any(mark in line for line in lines for mark in ("Trial ", "trial")), "\n".join(lines)
    assert len(lines) > 8


def test_errors_stay_one_line_and_name_the_file(tmp_path):
    home = tmp_path / "home"
    code, lines, _ = _vilocal(["forge", "--sources", str(tmp_path / "missing.mp4"), "--methods", "telea",
                               "--out", str(home / "forged")], home)
    errors = [line for line in lines if line.startswith("vilocal:")]
    assert code == 2 and len(errors) == 1 and str(tmp_path / "missing.mp4") in errors[0], lines
    assert len(lines) <= 2, lines  # the log-file line, then the error


def test_library_notices_go_to_the_file_ours_to_both(tmp_path, capfd):
    import logging
    import warnings

    from vilocal_dist import console

    try:
        with warnings.catch_warnings():  # pytest records warnings itself: here they go to logging
            warnings.simplefilter("always")
            path = console.setup("forge", False, tmp_path / "logs")
            logging.getLogger("vilocal_dist.distributed.forge").info("ours: shown")
            logging.getLogger("ray._private.authentication").warning("token auth note: file only")
            logging.getLogger("mlflow.store.db.utils").info("creating tables: file only")
            warnings.warn("a library deprecation: file only", DeprecationWarning, stacklevel=1)
            logging.getLogger("ray.tune").warning("tune warning: shown")
        err = capfd.readouterr().err
        assert "ours: shown" in err and "tune warning: shown" in err
        assert "file only" not in err
        text = path.read_text()
        assert all(s in text for s in ("ours: shown", "token auth note", "creating tables", "a library deprecation"))
        assert console.tune_verbosity() == 0 and console.ray_init_options() == {"log_to_driver": False}
        console.setup("forge", True, tmp_path / "logs")
        assert console.tune_verbosity() is None and console.ray_init_options() == {"log_to_driver": True}
    finally:
        console.setup("forge", False, None)
        logging.captureWarnings(False)
