"""A real multi-node cluster on one machine with S3 storage: forge → train → evaluate → detect,
a worker node killed mid-forge, and an S3 outage mid-forge.

The cluster: a Ray head without CPUs (the driver's node) and two worker nodes of 1 CPU each
(``ray.cluster_utils.Cluster``; every node a real raylet with its own processes), each with a
custom resource (``node_a``, ``node_b``) and its own scratch folder (``VILOCAL_SCRATCH`` in the
raylet's environment, inherited by its workers): anything a node writes locally lands there, so
the tests can show that only caches do. Storage is moto's standalone S3 server on loopback (see
``s3server.py``); forged data, Ray results and checkpoints, and reports all live in its bucket.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from s3server import S3Server, free_port, restore_env, use_env
from vilocal_dist import storage
from vilocal_dist.data import ForgedDataset

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BUCKET = "bkt"
TINY = ["--composed", "2", "--frames", "4", "--size", "32x48", "--methods", "telea", "--test-fraction", "0.5"]


class MultiNode:
    """The cluster, the S3 server and the folders of one test module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scratch = {name: root / f"scratch-{name}" for name in ("head", "a", "b")}
        self.home = root / "home"
        self.s3: S3Server | None = None
        self.cluster = None
        self.previous: dict = {}
        self.ray_tmp = tempfile.mkdtemp(prefix="vmn-")  # short: Ray's socket paths must fit 107 bytes

    def start(self) -> None:
        from ray.cluster_utils import Cluster

        self.s3 = S3Server()
        self.s3.create_bucket(BUCKET)
        # Every node (and the CLI drivers) inherits these: S3 endpoint, Ray storage, MLflow home.
        self.previous = use_env({**self.s3.env, "VILOCAL_STORAGE": f"s3://{BUCKET}/ray", "VILOCAL_HOME": str(self.home),
                                 "VILOCAL_SCRATCH": str(self.scratch["head"]), "MLFLOW_DISABLE_TELEMETRY": "true"})
        self.previous["MLFLOW_TRACKING_URI"] = os.environ.pop("MLFLOW_TRACKING_URI", None)  # the local store
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": True, "dashboard_port": free_port(), "temp_dir": self.ray_tmp,
            "env_vars": {"VILOCAL_SCRATCH": str(self.scratch["head"])},
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        })  # fmt: skip
        self.nodes = {
            name: self.cluster.add_node(num_cpus=1, resources={f"node_{name}": 1},
                                        env_vars={"VILOCAL_SCRATCH": str(self.scratch[name])})
            for name in ("a", "b")
        }  # fmt: skip
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    def close(self) -> None:
        """Stop whatever ``start`` got to start (also after it failed halfway)."""
        import ray

        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
        if self.s3 is not None:
            self.s3.close()
        restore_env(self.previous)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def vilocal(self, *args: str, cwd: Path) -> str:
        """Run a ``vilocal`` command as a user would (its own driver process); its stdout."""
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "vilocal_dist.cli.main", *args], cwd=cwd,
                              capture_output=True, text=True, timeout=400)  # fmt: skip
        assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-5000:])
        print(f"\nvilocal {args[0]}: {time.perf_counter() - start:.0f} s", flush=True)
        return done.stdout

    def trial_errors(self) -> set[str]:
        """Error files Tune (in this driver) wrote for failed trial attempts so far."""
        return {str(p) for p in Path(self.ray_tmp).glob("session_*/artifacts/*/forge-*/driver_artifacts/*/error.txt")}

    def trial_running_on(self, name: str) -> bool:
        """Whether a Tune trial (``ray::ImplicitFunc`` worker) runs on node ``name`` now."""
        from ray._private import ray_constants

        raylet = self.nodes[name].all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        try:
            return any("ImplicitFunc" in " ".join(p.cmdline()) for p in psutil.Process(raylet).children(recursive=True))
        except psutil.Error:
            return False


@pytest.fixture(scope="module")
def mn(tmp_path_factory):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    cluster = MultiNode(tmp_path_factory.mktemp("multinode"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def local_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def check_complete(root: str) -> list[dict]:
    """Every listed video's objects are there: its marker equals the record, all frames and masks."""
    records = ForgedDataset(root).records()
    for record in records:
        files = [e.rel for e in storage.list_files(f"{root}/videos/{record['id']}")]
        assert json.loads(storage.read_text(f"{root}/videos/{record['id']}/provenance.json")) == record
        for sub in ("frames", "masks"):
            assert sum(f.startswith(f"{sub}/") for f in files) == record["frames"], (record["id"], files)
    return records


def checksums(root: str, records: list[dict]) -> dict[str, str]:
    """sha256 of every frame and mask of the listed videos, by path."""
    return {f"{r['id']}/{e.rel}": hashlib.sha256(storage.read_bytes(f"{root}/videos/{r['id']}/{e.rel}")).hexdigest()
            for r in records for e in storage.list_files(f"{root}/videos/{r['id']}") if e.rel.endswith(".png")}  # fmt: skip


def reference(tmp: Path, jobs: list[dict]) -> dict[str, str]:
    """The same jobs forged undisturbed, in this process, into a local folder."""
    from vilocal_dist.engines.forge import forge_local

    splits = {j["video"]: j["split"] for j in jobs}
    forge_local(tmp, [j["source"] for j in jobs], ["telea"], splits=splits, progress=False)
    return checksums(str(tmp), ForgedDataset(tmp).records())


def run_forge(mn: MultiNode, out: str, composed: int, seed: int, retries: int) -> tuple[threading.Thread, dict, list]:
    """``forge`` on the cluster in a background thread (this process is the driver)."""
    import ray

    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs

    if not ray.is_initialized():
        ray.init(address=mn.address, log_to_driver=False)
    jobs = plan_jobs(expand_sources([], composed=composed, frames=4, size=(32, 48), seed=seed), ["telea"],
                     test_fraction=0.5, seed=seed)  # fmt: skip
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["summary"] = forge(jobs, ForgeOptions(out=out, seed=seed, test_fraction=0.5, retries=retries,
                                                          max_concurrent=2))  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome, jobs


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_forge_train_evaluate_detect_on_two_nodes_with_s3(mn, tmp_path):
    start = time.perf_counter()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    data, ray_root = f"s3://{BUCKET}/forged", f"s3://{BUCKET}/ray"
    out = mn.vilocal("forge", *TINY, "--out", data, "--max-concurrent", "2", "--address", mn.address, cwd=cwd)
    assert "2 videos planned, 0 already complete, 2 forged in this run (1 per trial), 0 failed" in out, out
    records = check_complete(data)
    assert sorted((r["id"], r["split"]) for r in records) == [("composed-0__telea", "train"), ("composed-1__telea", "test")]

    out = mn.vilocal("train", "--data", data, "--preset", "vilocal_tiny", "--workers", "2", "--run-name", "mn",
                     "--set", "size_h=32", "--set", "size_w=48", "--set", "stage1_epochs=1", "--set", "stage2_epochs=1",
                     "--set", "compress_fraction=0", "--address", mn.address, cwd=cwd)  # fmt: skip
    [ckpt1, ckpt2] = re.findall(r"best checkpoint (\S+)/model\.pt", out)
    assert ckpt1.startswith(f"{ray_root}/mn-stage1/") and ckpt2.startswith(f"{ray_root}/mn-stage2/"), out
    assert storage.exists(f"{ckpt2}/model.pt")
    # One worker per node (1 CPU each, none on the head): each read the data through its own cache.
    for name in ("a", "b"):
        cached = [f for f in local_files(mn.scratch[name]) if f.endswith("manifest.jsonl")]
        assert cached and all(f.startswith("cache/") for f in cached), (name, local_files(mn.scratch[name]))

    report = f"s3://{BUCKET}/reports/eval-test.json"
    out = mn.vilocal("evaluate", "--model", ckpt2, "--data", data, "--split", "test", "--report", report, cwd=cwd)
    result = json.loads(storage.read_text(report))
    assert result["videos"] == 1 and result["frames"] == 4 and result["data"] == data and result["model"] == ckpt2
    detections = f"s3://{BUCKET}/detections/composed-1"
    mn.vilocal("detect", f"{data}/videos/composed-1__telea", "--model", ckpt2, "--out", detections, cwd=cwd)
    written = [e.rel for e in storage.list_files(detections)]
    assert "report.json" in written and "overlay.mp4" in written and sum(f.startswith("masks/") for f in written) == 4

    # Nothing outside the storage root but caches: node scratch holds only cache/, the working
    # folder nothing, the home only the local MLflow store (this test runs no MLflow server) and
    # the driver's own command logs.
    for name, folder in mn.scratch.items():
        assert all(f.startswith("cache/") for f in local_files(folder)), (name, local_files(folder))
    assert local_files(cwd) == []
    home = sorted(p.name for p in mn.home.iterdir())
    assert home == ["artifacts", "logs", "mlflow.db"], home
    assert all(p.suffix == ".log" for p in (mn.home / "logs").iterdir())
    print(f"\nend to end on 3 nodes: {time.perf_counter() - start:.0f} s")


def test_worker_node_killed_mid_forge(mn, tmp_path):
    start = time.perf_counter()
    out = f"s3://{BUCKET}/forged-node-loss"
    errors_before = mn.trial_errors()
    thread, outcome, jobs = run_forge(mn, out, composed=4, seed=20, retries=3)
    wait_until(lambda: mn.trial_running_on("b") or not thread.is_alive(), 120, "a trial on node b")
    assert thread.is_alive(), outcome  # the forge is still running: the node dies mid-forge
    mn.cluster.remove_node(mn.nodes["b"], allow_graceful=False)
    thread.join(240)
    assert not thread.is_alive() and "error" not in outcome, outcome
    summary = outcome["summary"]
    assert (summary.planned, summary.failed, summary.complete) == (4, [], True), summary
    assert mn.trial_errors() - errors_before  # the trial on node b failed, and its retry succeeded
    records = check_complete(out)
    assert sorted(r["id"] for r in records) == sorted(j["id"] for j in jobs)  # nothing lost
    assert checksums(out, records) == reference(tmp_path / "ref", jobs)  # equals an undisturbed forge
    print(f"\nnode killed mid-forge: {time.perf_counter() - start:.0f} s")


def test_s3_outage_mid_forge(mn, tmp_path):
    start = time.perf_counter()
    out = f"s3://{BUCKET}/forged-outage"
    errors_before = mn.trial_errors()
    thread, outcome, jobs = run_forge(mn, out, composed=3, seed=40, retries=8)
    wait_until(lambda: mn.trial_running_on("a") or not thread.is_alive(), 120, "a running trial")
    mn.s3.relay.stop()  # the S3 endpoint is down: connections refused, open ones cut
    down = time.perf_counter()
    wait_until(lambda: mn.trial_errors() - errors_before or not thread.is_alive(), 120, "a trial failing on S3")
    mn.s3.relay.start()  # up again once a trial attempt has failed on it
    print(f"\nS3 endpoint down for {time.perf_counter() - down:.1f} s", flush=True)
    seen_torn = []
    while thread.is_alive():  # while the forge goes on, no record is ever listed without its objects
        try:
            check_complete(out)
        except AssertionError as exc:
            seen_torn.append(exc)
        time.sleep(0.5)
    thread.join()
    assert "error" not in outcome, outcome
    assert seen_torn == []
    summary = outcome["summary"]
    assert (summary.planned, summary.failed, summary.complete) == (3, [], True), summary
    failed = mn.trial_errors() - errors_before
    assert failed  # at least one attempt failed on the outage and was retried
    print("a failed attempt:", Path(sorted(failed)[0]).read_text().strip().splitlines()[-1][:300])
    records = check_complete(out)
    assert sorted(r["id"] for r in records) == sorted(j["id"] for j in jobs)
    assert checksums(out, records) == reference(tmp_path / "ref", jobs)
    print(f"\nS3 outage mid-forge: {time.perf_counter() - start:.0f} s")
