"""What the connected Ray cluster can provide, and whether a request fits it.

"Can provide" is what is up now (``ray.nodes()``) plus the node types its autoscaler may start.
A cloud cluster usually starts with 0 GPUs up (GPU worker types with ``min_workers: 0``); asking
only what is up would train on the head's CPUs and never ask the autoscaler for a GPU. Ray 2.60
exposes the node types in two places, read in this order:

1. the cluster config in the GCS (``ray._private.state.state.get_cluster_config()``: node groups
   with their resources and max counts), which clusters managed by an operator report;
2. the autoscaling config of this cluster's autoscaler (``available_node_types``), read from the
   file its monitor process was started with (``--autoscaling-config``; ``ray up`` heads use
   ``~/ray_bootstrap_config.yaml``). The monitor runs on the head, where ``ray job submit`` runs
   the driver, and is matched to this cluster by its GCS address;
3. ``$VILOCAL_NODE_TYPES``: the same ``available_node_types`` mapping as JSON, for autoscalers
   whose config the driver cannot see (KubeRay's runs in its own container and reads the
   RayCluster from Kubernetes; cluster/kuberay sets it to match the worker groups).

None found: the cluster is taken to be fixed-size, and a request that does not fit what is up
can never be met. Such requests fail here, in the driver, within seconds, as one line naming the
flag and what the cluster has (``ConfigError``: exit 2), instead of a Ray Train worker group or
a Tune trial waiting forever for resources.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vilocal_dist.errors import ConfigError

log = logging.getLogger(__name__)

#: ``--use-gpu`` choices.
USE_GPU = ("auto", "yes", "no")
#: Node types (JSON, as ``available_node_types``) where Ray does not show them to the driver.
NODE_TYPES_ENV = "VILOCAL_NODE_TYPES"
#: Stand-in count for node groups without an upper bound.
UNBOUNDED = 10**6


@dataclass(frozen=True)
class NodeType:
    """A node type the autoscaler may start: per-node CPUs and GPUs, and at most how many."""

    name: str
    cpus: float
    gpus: float
    max_count: int


@dataclass(frozen=True)
class Capacity:
    """Resources of the nodes up now, and the node types the autoscaler may add."""

    nodes: tuple[tuple[float, float], ...]  # (CPUs, GPUs) of every alive node
    node_types: tuple[NodeType, ...] = ()
    source: str = ""  # where the node types came from ("" = fixed-size cluster)

    @property
    def cpus_up(self) -> float:
        return sum(c for c, _ in self.nodes)

    @property
    def gpus_up(self) -> float:
        return sum(g for _, g in self.nodes)

    @property
    def max_cpus(self) -> float:
        """CPUs up plus every CPU the autoscaler may add (an upper bound)."""
        return self.cpus_up + sum(t.cpus * t.max_count for t in self.node_types)

    @property
    def max_gpus(self) -> float:
        """GPUs up plus every GPU the autoscaler may add (an upper bound)."""
        return self.gpus_up + sum(t.gpus * t.max_count for t in self.node_types)

    @property
    def has_gpus(self) -> bool:
        """Whether the cluster has a GPU or can start a node with one."""
        return self.max_gpus > 0

    def largest_node(self, gpus: bool) -> float:
        """Most GPUs (``gpus``) or CPUs one node has, up or startable (a task cannot span nodes)."""
        shapes = [g if gpus else c for c, g in self.nodes]
        shapes += [t.gpus if gpus else t.cpus for t in self.node_types if t.max_count > 0]
        return max(shapes, default=0.0)

    def describe(self) -> str:
        """E.g. ``1 node up (2 CPUs, 0 GPUs); the autoscaler may add gpu_worker (1 CPU, 1 GPU) ×2``."""
        up = f"{len(self.nodes)} node{'s' * (len(self.nodes) != 1)} up ({_n(self.cpus_up)} CPUs, {_n(self.gpus_up)} GPUs)"
        if not self.node_types:
            return up + ", no autoscaler node types"
        adds = ", ".join(f"{t.name} ({_n(t.cpus)} CPUs, {_n(t.gpus)} GPUs) ×{'∞' if t.max_count >= UNBOUNDED else t.max_count}"
                         for t in self.node_types)  # fmt: skip
        return f"{up}; the autoscaler may add {adds}"


def _n(x: float) -> str:
    return f"{x:g}"


def cluster_capacity() -> Capacity:
    """The connected cluster's capacity (Ray must be initialized)."""
    import ray

    nodes = tuple(
        (float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0))) for n in ray.nodes() if n.get("Alive")
    )
    readers = (("GCS cluster config", _gcs_node_types), ("autoscaling config", _monitor_node_types),
               (f"${NODE_TYPES_ENV}", _env_node_types))
    for source, reader in readers:
        try:
            types = reader()
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unreadable source is a missing one
            log.debug("could not read node types from the %s: %s", source, exc)
            types = None
        if types is not None:
            return Capacity(nodes, tuple(t for t in types if t.max_count > 0), source)
    return Capacity(nodes)


def _gcs_node_types() -> list[NodeType] | None:
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    return [
        NodeType(g.name, float(g.resources.get("CPU", 0)), float(g.resources.get("GPU", 0)),
                 UNBOUNDED if g.max_count < 0 else int(g.max_count))
        for g in config.node_group_configs
    ]  # fmt: skip


def _monitor_node_types() -> list[NodeType] | None:
    """Worker node types from the autoscaling config of this cluster's monitor, if it runs here."""
    path = autoscaling_config_path()
    return None if path is None else node_types_from_config(_read_yaml(path))


def _env_node_types() -> list[NodeType] | None:
    text = os.environ.get(NODE_TYPES_ENV, "").strip()
    if not text:
        return None
    try:
        types = json.loads(text)
        return node_types_from_config({"available_node_types": types})
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"${NODE_TYPES_ENV} must be a JSON mapping like "
                          f'{{"gpu": {{"resources": {{"CPU": 8, "GPU": 1}}, "max_workers": 4}}}} ({exc})') from exc


def autoscaling_config_path() -> Path | None:
    """The ``--autoscaling-config`` file of the autoscaler of the connected cluster, when its
    monitor process runs on this machine (the head)."""
    import psutil
    import ray

    gcs = f"--gcs-address={ray.get_runtime_context().gcs_address}"
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info.get("cmdline") or []
        if gcs not in args or not any(a.endswith(("autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py")) for a in args):
            continue
        for arg in args:
            if arg.startswith("--autoscaling-config="):
                return Path(arg.split("=", 1)[1]).expanduser()
    return None


def _read_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def node_types_from_config(config: Any) -> list[NodeType]:
    """Worker node types of a Ray cluster-launcher / autoscaling config (``available_node_types``;
    the head type is up already and is left out)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    cap = int(config.get("max_workers", UNBOUNDED))
    out = []
    for name, spec in types.items():
        if name == head or name == "ray.head.default":
            continue
        resources = spec.get("resources") or {}
        count = min(int(spec.get("max_workers", cap)), cap)
        out.append(NodeType(name, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), count))
    return out


# ----------------------------------------------------------------------------- requests


def resolve_use_gpu(choice: str, cap: Capacity) -> bool:
    """``--use-gpu``: auto = yes iff the cluster has or can start a GPU node."""
    if choice not in USE_GPU:
        raise ConfigError(f"--use-gpu must be one of {', '.join(USE_GPU)}, got {choice!r}")
    if choice == "yes" and not cap.has_gpus:
        raise ConfigError(f"--use-gpu yes: the cluster has no GPU and cannot start one ({cap.describe()})")
    return choice == "yes" or (choice == "auto" and cap.has_gpus)


def check_workers(workers: int, use_gpu: bool, gpus_per_worker: float, cap: Capacity) -> None:
    """A Ray Train worker group that can never be placed fails here (each worker: 1 CPU, and
    ``gpus_per_worker`` GPUs on one node when ``use_gpu``)."""
    if gpus_per_worker <= 0:
        raise ConfigError(f"--gpus-per-worker must be > 0, got {gpus_per_worker:g}")
    if use_gpu:
        if gpus_per_worker > cap.largest_node(gpus=True):
            raise ConfigError(f"--gpus-per-worker {gpus_per_worker:g}: no node has or can have that many GPUs "
                              f"({cap.describe()})")  # fmt: skip
        if workers * gpus_per_worker > cap.max_gpus + 1e-9:
            raise ConfigError(f"--workers {workers} with --gpus-per-worker {gpus_per_worker:g} needs "
                              f"{_n(workers * gpus_per_worker)} GPUs; the cluster has at most {_n(cap.max_gpus)} "
                              f"({cap.describe()}); lower --workers or use --use-gpu no")  # fmt: skip
    if workers > cap.max_cpus + 1e-9:
        raise ConfigError(f"--workers {workers}: each worker needs 1 CPU and the cluster has at most "
                          f"{_n(cap.max_cpus)} ({cap.describe()})")  # fmt: skip


def check_trial(cpus_per_trial: float, gpus_per_trial: float, cap: Capacity, flag: str = "--gpus-per-trial") -> None:
    """A Tune trial that no node can ever host fails here (``flag`` names the GPU setting)."""
    if gpus_per_trial < 0:
        raise ConfigError(f"{flag} must be >= 0, got {gpus_per_trial:g}")
    if gpus_per_trial > 0 and not cap.has_gpus:
        raise ConfigError(f"{flag} {gpus_per_trial:g}: the cluster has no GPU and cannot start one ({cap.describe()}); "
                          f"use {flag} 0")  # fmt: skip
    if gpus_per_trial > cap.largest_node(gpus=True):
        raise ConfigError(f"{flag} {gpus_per_trial:g}: no node has or can have that many GPUs ({cap.describe()})")
    if cpus_per_trial > cap.largest_node(gpus=False):
        raise ConfigError(f"cpus_per_trial {cpus_per_trial:g}: no node has or can have that many CPUs ({cap.describe()})")


def trial_concurrency(cpus_per_trial: float, gpus_per_trial: float, cap: Capacity) -> int:
    """Trials that fit at once on what the cluster can provide (at least 1): fractional GPUs pack
    ``1 / gpus_per_trial`` trials per GPU, counting GPUs the autoscaler may still start."""
    fits = [math.floor(cap.max_cpus / cpus_per_trial + 1e-9)]
    if gpus_per_trial > 0:
        fits.append(math.floor(cap.max_gpus / gpus_per_trial + 1e-9))
    return max(1, min(fits))


def default_workers(requested: int, use_gpu: bool, gpus_per_worker: float, cap: Capacity) -> int:
    """A preset's worker count cut to what the cluster can provide (the demo on a 1-GPU machine
    trains on 1 GPU worker instead of waiting forever for a second)."""
    room = cap.max_gpus / gpus_per_worker if use_gpu else cap.max_cpus
    return max(1, min(requested, int(math.floor(room + 1e-9)) or 1))
