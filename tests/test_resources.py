"""GPU requests that mean what they say (issue #13).

Scheduling runs for real on CPU nodes that declare logical GPUs to Ray (``num_gpus=1``); the
device is forced to the CPU there (``VILOCAL_FORCE_CPU=1``). The autoscaling case starts a head
with an autoscaling config for Ray's fake multi-node provider (``RAY_FAKE_CLUSTER=1``): 0 GPUs
up, a GPU worker type with ``min_workers: 0``. Heads and nodes are started and stopped by the test
itself, through their own process handles and temp dirs, never ``ray stop``. The CUDA path runs
where a GPU is present (marked ``gpu``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import torch
import yaml
from test_job_submit import _PORT_FLAGS, free_ports, ray_cli, stop_head

from vilocal_dist.cli.main import main
from vilocal_dist.device import pick_device
from vilocal_dist.distributed.resources import (
    Capacity,
    NodeType,
    check_trial,
    check_workers,
    default_workers,
    node_types_from_config,
    resolve_use_gpu,
    trial_concurrency,
)
from vilocal_dist.errors import ConfigError
from vilocal_dist.paths import REPO_ROOT

#: Impossible requests must fail within this (Ray start or connect included).
FAST_S = 20

FIXED_CPU = Capacity(nodes=((2.0, 0.0),))
ONE_GPU = Capacity(nodes=((2.0, 0.0), (2.0, 1.0)))
AUTOSCALING = Capacity(nodes=((2.0, 0.0),), node_types=(NodeType("gpu_worker", 4, 1, 3),), source="autoscaling config")


# ----------------------------------------------------------------------------- decisions (no Ray)


def test_auto_uses_gpus_the_autoscaler_can_start():
    assert resolve_use_gpu("auto", AUTOSCALING) and resolve_use_gpu("auto", ONE_GPU)
    assert not resolve_use_gpu("auto", FIXED_CPU) and not resolve_use_gpu("no", ONE_GPU)
    with pytest.raises(ConfigError, match=r"--use-gpu yes: the cluster has no GPU and cannot start one \(1 node up"):
        resolve_use_gpu("yes", FIXED_CPU)


def test_impossible_worker_groups_name_the_flag_and_the_cluster():
    with pytest.raises(ConfigError, match=r"--workers 2 with --gpus-per-worker 1 needs 2 GPUs; the cluster has at most 1 "
                                          r"\(2 nodes up \(4 CPUs, 1 GPUs\), no autoscaler node types\)"):
        check_workers(2, True, 1.0, ONE_GPU)
    with pytest.raises(ConfigError, match="--gpus-per-worker 2: no node has or can have that many GPUs"):
        check_workers(1, True, 2.0, AUTOSCALING)
    with pytest.raises(ConfigError, match="--workers 5: each worker needs 1 CPU"):
        check_workers(5, False, 1.0, ONE_GPU)
    check_workers(3, True, 1.0, AUTOSCALING)  # 3 GPU nodes may be started
    check_workers(2, True, 0.5, ONE_GPU)  # two workers share the GPU
    assert default_workers(2, True, 1.0, ONE_GPU) == 1 and default_workers(2, False, 1.0, ONE_GPU) == 2


def test_fractional_trials_size_by_what_the_cluster_can_provide():
    with pytest.raises(ConfigError, match=r"--gpus-per-trial 0.5: the cluster has no GPU and cannot start one"):
        check_trial(1, 0.5, FIXED_CPU)
    check_trial(1, 0.5, AUTOSCALING)
    # 0 GPUs up, 3 startable: 0.25 per trial packs 12 trials; the 14 CPUs are the limit after that.
    assert trial_concurrency(1, 0.25, AUTOSCALING) == 12
    assert trial_concurrency(1, 0.25, ONE_GPU) == 4 and trial_concurrency(1, 0, FIXED_CPU) == 2


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_shipped_cluster_configs_offer_gpu_node_types(name):
    """The shipped launcher configs start with 0 GPUs up; their worker types make `auto` use GPUs."""
    types = node_types_from_config(yaml.safe_load((REPO_ROOT / "cluster" / name).read_text()))
    cap = Capacity(nodes=((8.0, 0.0),), node_types=tuple(types))
    assert cap.gpus_up == 0 and cap.has_gpus and resolve_use_gpu("auto", cap)


# ----------------------------------------------------------------------------- a cluster of logical GPUs


@contextmanager
def ray_auth(token: str) -> Iterator[None]:
    """This process's Ray client with token auth and ``token`` (restored afterwards)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    names = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "VILOCAL_FORCE_CPU")
    saved = {k: os.environ.get(k) for k in names}
    for k in names:
        os.environ.pop(k, None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, VILOCAL_FORCE_CPU="1")
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory) -> Iterator[str]:
    """Head (2 CPUs, no GPU) + a worker node with 1 logical GPU and the custom resource ``gpu_node``."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="vres-", dir="/tmp")  # short: Ray's socket paths live below it
    with ray_auth(secrets.token_hex(32)):
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={
            "num_cpus": 2, "num_gpus": 0, "include_dashboard": True, "dashboard_port": free_ports(1)[0],
            "temp_dir": temp_dir})  # fmt: skip
        try:
            cluster.add_node(num_cpus=2, num_gpus=1, resources={"gpu_node": 1})
            cluster.wait_for_nodes()
            ray.init(address=cluster.address)
            yield cluster.address
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
def test_trials_use_exactly_the_gpu_ray_assigned(gpu_cluster, monkeypatch):
    """A task with a GPU gets cuda:<its index among CUDA_VISIBLE_DEVICES>; one without gets the CPU
    although the node has a GPU (Ray 2.60 does not hide it from num_gpus=0 tasks)."""
    import ray

    @ray.remote(max_calls=1)  # its worker exits afterwards: the CUDA stand-in dies with it
    def device_seen() -> tuple[str, list, str]:
        os.environ.pop("VILOCAL_FORCE_CPU", None)
        torch.cuda.is_available = lambda: True  # a logical GPU: pretend CUDA, to see the choice
        return str(pick_device()), ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES", "")

    with_gpu = device_seen.options(num_gpus=1, num_cpus=1).remote()
    without = device_seen.options(num_gpus=0, num_cpus=1, resources={"gpu_node": 0.01}).remote()
    (dev, ids, visible), (dev0, ids0, _) = ray.get([with_gpu, without], timeout=120)
    assert dev == "cuda:0" and len(ids) == 1 and visible == str(ids[0])
    assert dev0 == "cpu" and ids0 == []
    assert str(pick_device()) == "cpu"  # VILOCAL_FORCE_CPU=1 in this process


@pytest.mark.ray
def test_train_auto_places_workers_on_the_gpu_node(gpu_cluster, tmp_path):
    """`--use-gpu auto` on a cluster with a (logical) GPU: the Train worker reserves it and runs
    on the CPU (forced), with gloo."""
    from vilocal_dist.distributed.train import scaling

    use_gpu, config = scaling(1, "auto")
    assert use_gpu and config.resources_per_worker == {"CPU": 1, "GPU": 1.0}

    assert train_worker_view(config, tmp_path) == {"gpus": 1, "device": "cpu"}


def train_worker_view(scaling_config, tmp_path: Path) -> dict:
    """Run a Ray Train worker group with ``scaling_config`` (gloo: the device is the CPU); what
    its worker got: GPUs Ray assigned, and the device it picked."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    def worker_view(config: dict) -> None:  # nested: shipped by value, tests/ need not be importable
        import ray

        view = {"gpus": len(ray.get_gpu_ids()), "device": str(pick_device())}
        Path(config["out"]).write_text(json.dumps(view))

    out = tmp_path / "worker.json"
    TorchTrainer(worker_view, train_loop_config={"out": str(out)}, scaling_config=scaling_config,
                 torch_config=TorchConfig(backend="gloo"), run_config=ray.train.RunConfig(storage_path=str(tmp_path))).fit()  # fmt: skip
    return json.loads(out.read_text())


def _cli(argv: list[str], capsys) -> tuple[int, list[str], float]:
    start = time.perf_counter()
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines(), time.perf_counter() - start


@pytest.mark.ray
@pytest.mark.parametrize("argv, message", [
    (["train", "--workers", "2", "--use-gpu", "yes"], "--workers 2 with --gpus-per-worker 1 needs 2 GPUs; the cluster has at most 1"),
    (["train", "--workers", "1", "--gpus-per-worker", "2"], "--gpus-per-worker 2: no node has or can have that many GPUs"),
    (["forge", "--composed", "1", "--frames", "5", "--size", "32x48", "--methods", "telea", "--gpus-per-trial", "2"],
     "--gpus-per-trial 2: no node has or can have that many GPUs"),
], ids=["train-workers", "train-gpus-per-worker", "forge-gpus-per-trial"])
def test_impossible_requests_fail_fast_on_a_fixed_cluster(gpu_cluster, argv, message, tmp_path, capsys, monkeypatch,
                                                           corpus_forged):
    monkeypatch.setenv("VILOCAL_HOME", str(tmp_path / "home"))
    argv = argv + (["--data", str(corpus_forged), "--set", "model=vilocal_tiny"] if argv[0] == "train" else
                   ["--out", str(tmp_path / "out")])  # fmt: skip
    code, lines, seconds = _cli([*argv, "--address", gpu_cluster], capsys)
    assert code == 2 and len([l for l in lines if l.startswith("vilocal:")]) == 1 and message in lines[-1], lines
    assert seconds < FAST_S, f"took {seconds:.0f} s"
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


@pytest.fixture(scope="module")
def corpus_forged(tmp_path_factory) -> Path:
    """A tiny forged dataset (3 videos, 8 frames of 32x48)."""
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.data.manifest import write_forged_video

    root = tmp_path_factory.mktemp("forged")
    for i, split in enumerate(["train", "train", "test"]):
        video = compose_video(i, 8, (32, 48))
        write_forged_video(root, {"source_video": f"v{i}", "source": "composed", "method": "telea", "split": split,
                                  "config": {}, "seed": 0}, video.frames, video.masks)  # fmt: skip
    return root


@pytest.mark.ray
def test_gpu_sweep_on_a_gpu_less_cluster_fails_fast(tmp_path, capsys, monkeypatch):
    """sweeps/inpaint-regularizers.yaml asks 0.5 GPU per trial: on a cluster without GPUs (and no
    autoscaler) that is one line and exit 2 within seconds, not a hang with warnings."""
    import ray

    monkeypatch.setenv("VILOCAL_HOME", str(tmp_path / "home"))
    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="vres-", dir="/tmp")
    with ray_auth(secrets.token_hex(32)):
        ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, _temp_dir=temp_dir)
        try:
            code, lines, seconds = _cli(["sweep", "inpaint-regularizers.yaml", "--set", "data.composed=1"], capsys)
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)
    assert code == 2 and "resources.gpus_per_trial 0.5: the cluster has no GPU and cannot start one" in lines[-1], lines
    assert seconds < FAST_S


# ----------------------------------------------------------------------------- an autoscaling cluster


def fake_autoscaling_config(gcs_address: str, head_cpus: int) -> dict:
    """Ray's fake multi-node provider (real raylets on this machine), loaded as an ``external``
    provider: the wheel lacks the defaults file its ``fake_multinode`` type would read."""
    return {
        "cluster_name": "vilocal-fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "provider": {"type": "external", "gcs_address": gcs_address,
                     "module": "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 1},
        },
        "auth": {}, "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }  # fmt: skip


@pytest.fixture
def autoscaling_head() -> Iterator[str]:
    """A head with 2 CPUs and no GPU whose autoscaler may start one 1-GPU node; its GCS address."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = Path(tempfile.mkdtemp(prefix="vauto-", dir="/tmp"))
    ports = free_ports(len(_PORT_FLAGS))
    gcs = f"127.0.0.1:{ports[0]}"
    config = temp_dir.parent / f"{temp_dir.name}.json"
    config.write_text(json.dumps(fake_autoscaling_config(gcs, 2)))
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_USAGE_STATS_ENABLED="0", VILOCAL_FORCE_CPU="1",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    port_args = [str(a) for flag, port in zip(_PORT_FLAGS, ports) for a in (flag, port)]
    log = open(temp_dir.parent / f"{temp_dir.name}.log", "wb")
    head = subprocess.Popen(
        [ray_cli(), "start", "--head", "--block", f"--autoscaling-config={config}", "--node-ip-address", "127.0.0.1",
         "--dashboard-host", "127.0.0.1", *port_args, "--num-cpus", "2", "--num-gpus", "0", "--temp-dir", str(temp_dir),
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        with ray_auth(token):
            deadline = time.monotonic() + 120
            while True:
                try:
                    ray.init(address=gcs, log_to_driver=False)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if head.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(1)
            yield gcs
    finally:
        ray.shutdown()
        stop_head(head, temp_dir)  # also kills the fake worker node's raylet (it runs under temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        config.unlink(missing_ok=True)
        Path(log.name).unlink(missing_ok=True)


@pytest.mark.ray
@pytest.mark.slow
def test_auto_asks_the_autoscaler_for_a_gpu_node(autoscaling_head, tmp_path):
    """0 GPUs up, a GPU type with min_workers 0: `auto` means GPUs, the Train worker's request makes
    the autoscaler start the (logical) GPU node, and the worker runs with that GPU assigned.
    Impossible requests still fail within seconds."""
    import ray

    from vilocal_dist.distributed.resources import cluster_capacity
    from vilocal_dist.distributed.train import scaling

    cap = cluster_capacity()
    assert cap.gpus_up == 0 and cap.source == "autoscaling config", cap
    assert [t.name for t in cap.node_types] == ["gpu_worker"] and trial_concurrency(1, 0.25, cap) == 3
    for workers, per_worker, message in [(2, 1.0, "--workers 2 with --gpus-per-worker 1 needs 2 GPUs"),
                                         (1, 2.0, "--gpus-per-worker 2: no node has or can have")]:  # fmt: skip
        start = time.perf_counter()
        with pytest.raises(ConfigError, match=message):
            scaling(workers, "yes", per_worker)
        assert time.perf_counter() - start < FAST_S

    use_gpu, config = scaling(1, "auto")
    assert use_gpu

    assert train_worker_view(config, tmp_path) == {"gpus": 1, "device": "cpu"}
    assert ray.cluster_resources().get("GPU") == 1, "the autoscaler did not start the GPU node"


# ----------------------------------------------------------------------------- real CUDA


@pytest.mark.gpu
@pytest.mark.ray
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (none on this machine)")
def test_cuda_trial_uses_its_assigned_gpu_and_cpu_trial_the_cpu(tmp_path):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="vgpu-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir)
    try:
        @ray.remote
        def run() -> tuple[str, str]:
            dev = pick_device()
            x = torch.ones(4, device=dev) * 2  # real work on the chosen device
            return str(dev), str(x.device)

        gpu = ray.get(run.options(num_gpus=1).remote(), timeout=120)
        cpu = ray.get(run.options(num_gpus=0).remote(), timeout=120)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert gpu == ("cuda:0", "cuda:0") and cpu == ("cpu", "cpu")
