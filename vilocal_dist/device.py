"""Which torch device a piece of work runs on: the GPU Ray assigned to it, or the CPU.

Inside a Ray task or actor (a Tune trial, a Train worker) the answer is what Ray reserved for it:
``ray.get_gpu_ids()`` names the GPUs, and Ray restricts ``CUDA_VISIBLE_DEVICES`` to them, so the
torch index is the position of the assigned id in that list. A trial that reserved no GPU gets
the CPU even on a GPU node: Ray 2.60 no longer hides the node's GPUs from tasks with
``num_gpus=0``, and ``cuda:0`` there would be a GPU that another trial owns.

Outside Ray (``vilocal inpaint``, ``vilocal detect`` on a workstation) ``auto`` means the current
CUDA device when there is one. ``VILOCAL_FORCE_CPU=1`` forces the CPU everywhere, e.g. on CPU
test nodes that declare logical GPUs to Ray's scheduler.
"""

from __future__ import annotations

import os
import sys

import torch

#: Set to 1 to run every model on the CPU whatever Ray assigned (logical GPUs in tests).
FORCE_CPU_ENV = "VILOCAL_FORCE_CPU"


def force_cpu() -> bool:
    """Whether ``$VILOCAL_FORCE_CPU`` asks for the CPU."""
    return os.environ.get(FORCE_CPU_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _ray_worker_gpus() -> list[str] | None:
    """GPU ids Ray assigned to this worker process; None outside a Ray worker (a driver, no Ray)."""
    ray = sys.modules.get("ray")  # never import Ray just to ask: plain commands do not start it
    if ray is None or not ray.is_initialized():
        return None
    if ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return [str(g) for g in ray.get_gpu_ids()]


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU Ray assigned to this worker (``cuda:<local index>``), the CPU when it has
    none; outside Ray the current CUDA device if any. Any other name is taken as given."""
    if name != "auto":
        return torch.device(name)
    if force_cpu() or not torch.cuda.is_available():
        return torch.device("cpu")
    assigned = _ray_worker_gpus()
    if assigned is None:
        return torch.device("cuda")
    if not assigned:
        return torch.device("cpu")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:  # nothing hidden: Ray's id is the physical index
        return torch.device(f"cuda:{assigned[0]}")
    return torch.device(f"cuda:{visible.index(assigned[0]) if assigned[0] in visible else 0}")
