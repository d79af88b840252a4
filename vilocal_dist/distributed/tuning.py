"""Tune plumbing shared by the forge, the sweeps and auto-λ: stable experiment folders, resume,
per-trial thread limits, concurrency sizing, the MLflow parent run and result rows.

Stable names: an experiment lives at ``storage_path()/<name>`` (no timestamps), so rerunning
with ``resume=True`` finds it and ``Tuner.restore`` continues it: finished trials are kept, the
unfinished and errored ones run again.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ray import tune

from vilocal_dist.distributed.tune_mlflow import numeric_metrics
from vilocal_dist.tracking.runs import mlflow_run
from vilocal_dist.tracking.setup import ensure_experiment, storage_path, tracking_uri

#: Finished trials after which this driver process interrupts its run (None = never). A process
#: setting, not part of the experiment: Tune pickles callbacks with the experiment, and a resumed
#: run must not inherit the budget of the session that started it.
_SESSION = {"budget": None, "finished": 0}


def limit_threads(n: int = 1) -> None:
    """Pin torch / OpenCV / BLAS to ``n`` threads inside a trial: concurrent trials on one machine
    would otherwise each start a thread per core and slow each other down."""
    import cv2
    import torch

    n = max(1, int(n))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (a cluster, or ``$RAY_ADDRESS``) or start a local Ray; no-op when
    Ray is already up. The dashboard stays on: Ray Train inside Tune needs its State API.

    A local Ray gets token auth with a token of its own (see ``local_auth_token``), as the head
    that ``cluster/local.sh`` starts does; a cluster brings its own auth settings.
    """
    import ray

    from vilocal_dist.console import after_ray_init, ray_init_options

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        local_auth_token()
    ray.init(
        # "local": a fresh Ray of its own. Without it ray.init() joins any head that `ray start`
        # left on this machine (someone else's, with another token).
        address=address or "local",
        num_cpus=num_cpus if not address else None,
        include_dashboard=True,
        # Attaching to a cluster (e.g. inside `ray job submit`) the job's own runtime env applies;
        # Ray refuses to merge a second one that sets the same variables.
        runtime_env=None if address else {"env_vars": {"MLFLOW_DISABLE_TELEMETRY": "true"}},
        **ray_init_options(),
    )
    after_ray_init()


def local_auth_token() -> Path | None:
    """Token auth for a local Ray this process starts: a fresh random token in a private file
    (folder 0700, file 0600, removed at exit), ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH``
    set for this process and the Ray processes it starts. Without it Ray would share one token in
    ``~/.ray/auth_token`` between every local cluster of the user. Explicit settings win: with
    ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` already set, nothing changes
    (returns None)."""
    if any(os.environ.get(v) for v in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return None
    from ray._raylet import AuthenticationTokenLoader, Config

    folder = Path(tempfile.mkdtemp(prefix="vilocal-ray-auth-"))  # mkdtemp: 0700, owner only
    path = folder / "auth_token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # 256 random bits
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)})
    Config.initialize("")  # this process's cached Ray config and token see the new settings
    AuthenticationTokenLoader.instance().reset_cache()
    return path


def driver_env() -> dict[str, str]:
    """Where this driver records (MLflow URI, Ray storage, home), resolved to absolute values.

    Trials run in worker processes whose environment and working directory are not the
    driver's; a trial that records on its own (e.g. ``train_stage``'s MLflow runs) adopts these
    with ``adopt_env`` so everything lands in the driver's store, not in a per-trial temp dir.
    """
    from vilocal_dist.tracking.setup import home_dir

    return {"MLFLOW_TRACKING_URI": tracking_uri(), "VILOCAL_STORAGE": storage_path(), "VILOCAL_HOME": str(home_dir())}


def adopt_env(env: Mapping[str, str]) -> None:
    """Inside a trial: use the driver's recording locations (see ``driver_env``)."""
    os.environ.update(env)


def experiment_path(name: str, root: str | None = None) -> str:
    """``<storage_path()>/<name>`` (local folder or s3://, gs:// URI)."""
    base = root or storage_path()
    return f"{base.rstrip('/')}/{name}"


def can_resume(path: str) -> bool:
    return tune.Tuner.can_restore(path)


def set_session_budget(trials: int | None) -> None:
    """Interrupt this process's next ``Tuner.fit`` after ``trials`` trials finish (None = never),
    exactly like Ctrl-C: the experiment state is saved and ``--resume`` continues it."""
    _SESSION["budget"] = trials
    _SESSION["finished"] = 0


class SessionBudget(tune.Callback):
    """Counts finished trials and interrupts the run when the session budget is spent."""

    def _count(self) -> None:
        _SESSION["finished"] += 1
        budget = _SESSION["budget"]
        # Tune's own SIGUSR1 handler (installed in the main thread only) turns this into a
        # graceful stop; without that handler the signal would kill the process, so don't.
        handler = signal.getsignal(signal.SIGUSR1)
        if budget is not None and _SESSION["finished"] >= budget and callable(handler):
            if threading.current_thread() is threading.main_thread():
                _SESSION["budget"] = None
                os.kill(os.getpid(), signal.SIGUSR1)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._count()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._count()


def is_complete(results: Any, expected: int) -> bool:
    """Whether a ResultGrid holds ``expected`` trials, all ended (TERMINATED or ERROR); False
    after an interruption (Ctrl-C, a session budget), when ``resume`` has work left."""
    return len(results) >= expected and results.num_terminated + results.num_errors == len(results)


def default_concurrency(cpus_per_trial: float, gpus_per_trial: float = 0.0, max_concurrent: int = 0,
                        flag: str = "--gpus-per-trial") -> int:
    """How many trials run at once: ``max_concurrent``, or what the cluster can provide (GPUs the
    autoscaler may still start count). A trial no node can ever host fails here, naming ``flag``."""
    from vilocal_dist.distributed.resources import check_trial, cluster_capacity, trial_concurrency

    cap = cluster_capacity()
    check_trial(cpus_per_trial, gpus_per_trial, cap, flag)
    return max_concurrent or trial_concurrency(cpus_per_trial, gpus_per_trial, cap)


def find_parent_run(experiment: str, path: str, uri: str | None = None) -> str | None:
    """Id of the newest parent run recorded for the experiment folder ``path`` (for resume)."""
    import mlflow

    uri = tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [ensure_experiment(experiment, uri)],
        filter_string=f"tags.`vilocal.tune_path` = '{path}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


@contextmanager
def parent_run(
    experiment: str, name: str, *, path: str, resume: bool, params: Mapping[str, Any], tags: Mapping[str, str] | None = None
) -> Iterator[Any]:
    """The sweep's parent run (reopened on resume, so one sweep keeps one parent). It always ends."""
    run_id = find_parent_run(experiment, path) if resume else None
    all_tags = {"vilocal.tune_path": path, "vilocal.role": "parent", **(tags or {})}
    with mlflow_run(experiment, name, params=params, tags=all_tags, run_id=run_id) as run:
        yield run


def result_rows(results: Any, extra: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One flat row per trial of a ResultGrid, ordered by trial id (a restored grid gives the same
    rows): trial id, status, ``extra(config)`` (e.g. the searched parameters), last metrics.

    Status: ERROR, TERMINATED (ran to its end) or STOPPED (early-stopped, or cut by an
    interruption).
    """
    rows = []
    for result in results:
        metrics = dict(result.metrics or {})
        status = "ERROR" if result.error else ("TERMINATED" if metrics.get("done") else "STOPPED")
        row: dict[str, Any] = {
            "trial_id": metrics.get("trial_id") or os.path.basename(str(result.path)),
            "status": status,
            **(extra(dict(result.config or {})) if extra else {}),
            "iterations": metrics.get("training_iteration", 0),
        }
        for key, value in numeric_metrics(metrics).items():
            row.setdefault(key, value)
        rows.append(row)
    return sorted(rows, key=lambda r: str(r["trial_id"]))
