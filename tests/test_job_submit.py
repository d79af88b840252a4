"""A real `ray job submit` round trip against a throw-away local Ray head.

The head runs with token authentication (``RAY_AUTH_MODE=token``, a fresh random token in
``RAY_AUTH_TOKEN`` on both sides): since Ray 2.59 a head started by ``ray start --head`` turns
token auth on by itself as soon as ``~/.ray/auth_token`` exists, and a client without the token
then fails with "Missing authentication token". Giving both sides an explicit token makes the test
independent of whatever is in the home directory, and never writes there.

The head gets its own ``--temp-dir`` and free ports, runs ``--block`` in its own session, and is
stopped by its own process handle (never by a bare ``ray stop``, which would stop every Ray
instance on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from vilocal_dist.paths import REPO_ROOT

#: The job's command line; ``{out}`` becomes an absolute output folder. Once the demo exists,
#: switch to "python -m vilocal_dist demo --preset smoke" and make `check_job_outputs` call
#: `assert_mlflow_records` (the job is pointed at a fresh SQLite store either way).
#: The main job at its smallest: compose → forge fan-out → Ray Train stages 1+2 → evaluation.
JOB_ENTRYPOINT = "python -m vilocal_dist demo --preset smoke --sweep none --out {out}"

#: Logical CPUs of the test head: the entrypoint itself takes none, a Tune trial's driver one.
HEAD_NUM_CPUS = 2
HEAD_OBJECT_STORE_BYTES = 512 * 1024**2
#: Upper bounds for waiting on slow, shared CI machines; nothing asserts on durations.
HEAD_START_TIMEOUT_S = 180
JOB_TIMEOUT_S = 600
HEAD_STOP_TIMEOUT_S = 90

#: Ports `ray start --head` would otherwise take from fixed defaults (6379, 8265, 10001, ...),
#: clashing with any other Ray instance on the machine.
_PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


@dataclass(frozen=True)
class LocalHead:
    """A running test head: where to submit jobs and the environment a client needs."""

    dashboard_url: str
    token: str
    client_env: dict[str, str]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on loopback right now (all held open until every one is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ray_cli() -> str:
    """The `ray` executable of this interpreter's environment."""
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        pytest.skip("the `ray` command line is not installed beside this Python")
    return found


def auth_env(token: str) -> dict[str, str]:
    """This process's environment with Ray token auth on and no inherited cluster address."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_USAGE_STATS_ENABLED="0",
        MLFLOW_DISABLE_TELEMETRY="true",
        # The job's `python` must be this environment's interpreter (it has the dependencies).
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    return env


def session_processes(session_id: int) -> list[psutil.Process]:
    """Live processes of a session: `ray start --block` and everything it spawned.

    Ray workers get their own process group but stay in the session of the head that started them.
    """
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == session_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return found


def processes_using(path: Path) -> list[psutil.Process]:
    """Live processes whose command line names ``path`` (Ray daemons carry their temp dir)."""
    needle = str(path)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(needle in part for part in proc.info["cmdline"] or ()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_for_dashboard(url: str, token: str, head: subprocess.Popen, log_file: Path) -> None:
    """Block until the job API answers (authenticated); fail early if the head died."""
    request = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray head exited with {head.returncode}:\n{log_file.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"ray dashboard at {url} not up after {HEAD_START_TIMEOUT_S}s:\n{log_file.read_text()[-4000:]}")


def stop_head(head: subprocess.Popen, temp_dir: Path) -> None:
    """Stop the head we started, then kill whatever of it outlived the graceful stop.

    SIGTERM goes to `ray start --block` alone: it drains the node and stops its own children in
    order (signalling the whole group kills the GCS first and the drain then hangs on it).
    """
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=HEAD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
    leftovers = {p.pid: p for p in session_processes(head.pid) + processes_using(temp_dir)}
    for proc in leftovers.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(list(leftovers.values()), timeout=30)


@pytest.fixture
def ray_head() -> Iterator[LocalHead]:
    """A Ray head on loopback with its own temp dir, ports and auth token; stopped afterwards."""
    ray = ray_cli()
    # Short and under /tmp: Ray's unix socket paths live below the temp dir and must stay short.
    temp_dir = Path(tempfile.mkdtemp(prefix="vilocal-test-", dir="/tmp"))
    log_file = temp_dir.parent / f"{temp_dir.name}.log"
    token = secrets.token_hex(32)
    env = auth_env(token)
    ports = free_ports(len(_PORT_FLAGS))
    port_args = [str(a) for flag, port in zip(_PORT_FLAGS, ports) for a in (flag, port)]
    dashboard_port = ports[_PORT_FLAGS.index("--dashboard-port")]
    command = [
        ray, "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1",
        "--dashboard-host", "127.0.0.1",
        *port_args,
        "--num-cpus", str(HEAD_NUM_CPUS),
        "--num-gpus", "0",
        "--object-store-memory", str(HEAD_OBJECT_STORE_BYTES),
        "--temp-dir", str(temp_dir),
        "--disable-usage-stats",
    ]  # fmt: skip
    with open(log_file, "wb") as log:
        head = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{dashboard_port}"
        wait_for_dashboard(url, token, head, log_file)
        yield LocalHead(dashboard_url=url, token=token, client_env=env)
    finally:
        stop_head(head, temp_dir)
        left = processes_using(temp_dir) + session_processes(head.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)
        log_file.unlink(missing_ok=True)
        assert not left, f"processes of the test head survived: {[p.pid for p in left]}"


def submit(head: LocalHead, entrypoint: str, env_vars: dict[str, str], submission_id: str) -> str:
    """`ray job submit` from the repository root; returns its output (the job's log)."""
    runtime_env = {"env_vars": env_vars}
    command = [
        ray_cli(), "job", "submit",
        "--address", head.dashboard_url,
        "--submission-id", submission_id,
        "--working-dir", str(REPO_ROOT),
        "--runtime-env-json", json.dumps(runtime_env),
        "--log-style", "record",
        "--", *shlex.split(entrypoint),
    ]  # fmt: skip
    done = subprocess.run(
        command, env=head.client_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"ray job submit exited {done.returncode}:\n{output[-6000:]}"
    return output


def job_status(head: LocalHead, submission_id: str) -> JobStatus:
    """The job's status from the job API (the token goes in an explicit Authorization header)."""
    client = JobSubmissionClient(head.dashboard_url, headers={"Authorization": f"Bearer {head.token}"})
    return client.get_job_status(submission_id)


def assert_mlflow_records(tracking_uri: str) -> None:
    """The store holds runs the job logged: every one FINISHED and tagged with its provenance."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert experiments, f"no experiment was created in {tracking_uri}"
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert runs, f"experiments {[e.name for e in experiments]} hold no runs"
    for run in runs:
        assert run.info.status == "FINISHED", f"run {run.info.run_name} ended {run.info.status}"
        assert "vilocal.version" in run.data.tags, f"run {run.info.run_name} lacks provenance tags"


def check_job_outputs(out_dir: Path, tracking_uri: str, log: str) -> None:
    """What `JOB_ENTRYPOINT` must have left: a forged dataset, a summary, and MLflow records."""
    import json

    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["tracking_uri"] == tracking_uri, "the job did not use the MLflow store it was pointed at"
    lines = (out_dir / "forged" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 8, f"expected 4 videos x 2 methods in the manifest, found {len(lines)}"
    assert {row["method"] for row in summary["evaluation"]} >= {"telea", "ns"}
    # The job's stdout reaches the submitter: the demo prints its table and where results went.
    assert "open the dashboard" in log and str(out_dir / "summary.json") in log
    assert_mlflow_records(tracking_uri)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    names = {e.name for e in client.search_experiments()}
    assert {"vilocal-forge", "vilocal-train", "vilocal-demo"} <= names, names


@pytest.mark.ray
@pytest.mark.slow
def test_job_submit_runs_entrypoint_on_local_head(ray_head: LocalHead, tmp_path: Path) -> None:
    out_dir = tmp_path / "job-out"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # absolute: four slashes
    env_vars = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "VILOCAL_STORAGE": str(tmp_path / "ray-storage"),
        "VILOCAL_HOME": str(tmp_path / "home"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    submission_id = f"vilocal-test-{secrets.token_hex(4)}"
    entrypoint = JOB_ENTRYPOINT.format(out=shlex.quote(str(out_dir)))

    output = submit(ray_head, entrypoint, env_vars, submission_id)

    assert job_status(ray_head, submission_id) == JobStatus.SUCCEEDED, output[-4000:]
    check_job_outputs(out_dir, tracking_uri, output)


def test_assert_mlflow_records_needs_a_finished_tagged_run(tmp_path: Path) -> None:
    from vilocal_dist.tracking import mlflow_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(AssertionError, match="no experiment"):
        assert_mlflow_records(uri)
    with mlflow_run("job-submit-check", "one", params={"a": 1}, uri=uri):
        pass
    assert_mlflow_records(uri)
