"""Installable anywhere: a NON-editable install (what cluster/Dockerfile does) runs every shipped
workflow from an unrelated folder, including a `ray job submit` with no --working-dir.

The package is built from a copy of the tracked files (nothing lands in the checkout) into a fresh
venv. Dependencies are not downloaded again: a ``.pth`` file puts this environment's
site-packages after the fresh venv's own, so only vilocal_dist itself comes from the new install
(its sweep specs and experiment configs included, as package data). Subprocesses get no
PYTHONPATH, so nothing from the checkout can leak in; the test asserts where vilocal_dist is
imported from.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from test_job_submit import _PORT_FLAGS, free_ports, stop_head, wait_for_dashboard

from vilocal_dist.paths import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray]

INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 1800  # generous: CI machines are shared (the smoke demo took 14 min at load 40 on 2 cores)


def tracked_copy(dest: Path) -> Path:
    """The tracked files of the checkout (as in a fresh clone, local edits included) under ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src, dst = REPO_ROOT / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        elif src.is_file():
            shutil.copy2(src, dst)
    return dest


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with vilocal_dist installed non-editable; dependencies from this environment."""
    root = tmp_path_factory.mktemp("install")
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=INSTALL_TIMEOUT_S)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    (purelib / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The `ray` command, as installing ray here would make it: Ray's processes (raylets, workers,
    # job drivers) then run this venv's interpreter, and so the installed vilocal_dist.
    ray = env_dir / "bin" / "ray"
    ray.write_text(f"#!{python}\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n")
    ray.chmod(0o755)
    src = tracked_copy(root / "src")
    build_before = (REPO_ROOT / "build").exists()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", str(src)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (REPO_ROOT / "build").exists() == build_before, "building the package wrote build/ into the checkout"
    shutil.rmtree(src)  # the install must not need its source any more
    return env_dir


def clean_env(env_dir: Path, home: Path) -> dict[str, str]:
    """The fresh venv first on PATH, no PYTHONPATH, no cluster address, runs under ``home``."""
    drop = ("PYTHONPATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI", "VILOCAL_STORAGE",
            "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "VIRTUAL_ENV")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PATH=os.pathsep.join([str(env_dir / "bin"), env.get("PATH", "")]), VILOCAL_HOME=str(home),
               MLFLOW_DISABLE_TELEMETRY="true", RAY_USAGE_STATS_ENABLED="0")  # fmt: skip
    return env


def run(command: list[str], env: dict[str, str], cwd: Path) -> tuple[str, float]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode} after {seconds:.0f} s:\n{output[-5000:]}"
    print(f"{' '.join(command)}: {seconds:.0f} s")
    return output, seconds


def test_installed_package_has_its_data_and_no_checkout(venv: Path, tmp_path: Path) -> None:
    env = clean_env(venv, tmp_path / "home")
    code = ("import json, vilocal_dist, vilocal_dist.paths as p; print(json.dumps([vilocal_dist.__file__, "
            "str(p.resolve_spec('demo.yaml')), str(p.spec_dir() / 'experiments' / 'generalization-tiny.yaml')]))")
    where, demo, tiny = json.loads(run([str(venv / "bin" / "python"), "-c", code], env, tmp_path)[0].splitlines()[-1])
    assert str(venv) in where and str(REPO_ROOT) not in where, where
    assert Path(demo).is_file() and Path(tiny).is_file() and str(venv) in demo


def elsewhere(tmp_path: Path) -> Path:
    work = tmp_path / "elsewhere"
    work.mkdir()
    return work


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_demo_runs_from_an_unrelated_folder(venv: Path, tmp_path: Path) -> None:
    work = elsewhere(tmp_path)
    run(["vilocal", "demo", "--preset", "smoke"], clean_env(venv, tmp_path / "home"), work)
    summary = json.loads((tmp_path / "home" / "demo-smoke" / "summary.json").read_text())
    assert summary["sweep"]["trials"] >= 1, "the demo's sweep step (sweeps/demo.yaml, packaged) ran no trial"
    # What the forgers' fills scored against the composed videos' clean backgrounds, and their cost.
    assert set(summary["fill_quality"]) == {"telea", "ns"}
    assert all(5 < q["hole_psnr"] < 60 and q["seconds"] > 0 for q in summary["fill_quality"].values())
    assert not (work / "runs").exists(), "outputs belong under VILOCAL_HOME, not the working folder"


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_experiment_runs_from_an_unrelated_folder(venv: Path, tmp_path: Path) -> None:
    work = elsewhere(tmp_path)
    output, _ = run(["vilocal", "experiment", "generalization", "--tiny"], clean_env(venv, tmp_path / "home"), work)
    assert "experiment config not found" not in output
    assert any((tmp_path / "home").iterdir()) and not (work / "runs").exists()


@pytest.fixture
def installed_head(venv: Path, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head started from the fresh venv (token auth, own temp dir and ports)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="vilocal-inst-", dir="/tmp"))
    log_file = temp_dir.parent / f"{temp_dir.name}.log"
    token = secrets.token_hex(32)
    env = {**clean_env(venv, tmp_path / "home"), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    ports = free_ports(len(_PORT_FLAGS))
    port_args = [str(a) for flag, port in zip(_PORT_FLAGS, ports) for a in (flag, port)]
    url = f"http://127.0.0.1:{ports[_PORT_FLAGS.index('--dashboard-port')]}"
    command = [str(venv / "bin" / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--dashboard-host", "127.0.0.1", *port_args, "--num-cpus", "2", "--num-gpus", "0",
               "--temp-dir", str(temp_dir), "--disable-usage-stats"]  # fmt: skip
    with open(log_file, "wb") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=tmp_path)  # fmt: skip
    try:
        wait_for_dashboard(url, token, head, log_file)
        yield url, env
    finally:
        stop_head(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        log_file.unlink(missing_ok=True)


@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_ray_job_submit_without_working_dir(venv: Path, installed_head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    """What a RayJob in the image does: the entrypoint runs the installed package, specs included."""
    url, env = installed_head
    home = tmp_path / "job-home"
    runtime_env = {"env_vars": {"VILOCAL_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}}
    entrypoint = ["python", "-m", "vilocal_dist", "sweep", "demo.yaml", "--only", "demo-lambda",
                  "--set", "num_samples=1", "--set", "data.composed=1"]  # fmt: skip
    output, _ = run([str(venv / "bin" / "ray"), "job", "submit", "--address", url, "--runtime-env-json",
                     json.dumps(runtime_env), "--log-style", "record", "--", *entrypoint], env, tmp_path)  # fmt: skip
    assert "succeeded" in output, output[-3000:]
    assert (home / "ray" / "demo-lambda").is_dir() and (home / "mlflow.db").is_file(), output[-3000:]
