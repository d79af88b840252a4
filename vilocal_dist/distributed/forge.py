"""The forged-dataset factory: one Tune trial per (video, method), each writing one forged video.

Plan → skip → fan out:

1. ``expand_sources`` turns DAVIS roots, sequence folders, video files and ``--composed N`` into
   (name, spec) pairs; ``plan_jobs`` crosses them with the methods and assigns each source video
   one split (by source video, never by clip: all forgeries of a scene share a split).
2. Jobs whose id is already in the manifest are dropped before any trial exists, so a rerun of a
   finished forge starts no Tuner at all (and ``forge_video`` itself skips complete videos too).
3. The rest run as a grid of trials (``tune.grid_search`` over job dicts; no search algorithm)
   with declared resources (fractional GPUs pack several videos on one GPU), a concurrency cap
   and retries. The experiment folder name is a hash of the whole plan, so rerunning the same
   command after an interruption finds it and ``Tuner.restore`` continues it.

Storage: ``out`` is a local folder or a storage URI (``s3://bucket/forged``). A trial stores its
video's objects (``data.manifest.store_video``: from node-local scratch, marker last) and reports
the record; the driver alone appends records to the manifest (``ManifestPublisher``, as results
arrive, and once more after the run), so no lock spans nodes.

Faults: a trial that raises or whose worker dies (or whose node dies) is restarted up to
``retries`` times and redoes its video from scratch; nothing reaches the manifest before a video
is completely stored, and the dead attempt's temp folder is swept by the next writer
(``data.manifest``). A video stored whose record the driver never published (the driver died, or
storage was down at that moment) is found by the next run and listed without redoing it. A video failing every
attempt is listed in ``ForgeSummary.failed``; the same command again retries only it.
Trial folders are named ``<job id>_<trial id>``.

MLflow: experiment ``vilocal-forge``, a parent run per forge (reopened on resume), a child run
per trial written by the driver-side ``MLflowTrialLogger``; the parent logs the dataset as an
MLflow dataset (``tracking.lineage``), and the runs that train on it or evaluate on it link back.
Console: one bar over the videos (``TrialProgress``), Tune's trial tables only with ``--verbose``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from ray import tune

from vilocal_dist.console import phase, tune_verbosity
from vilocal_dist.distributed.progress import TrialProgress
from vilocal_dist.distributed.tune_mlflow import MLflowTrialLogger, close_open_children, numeric_metrics
from vilocal_dist.distributed.tuning import (
    SessionBudget,
    can_resume,
    default_concurrency,
    experiment_path,
    init_ray,
    is_complete,
    limit_threads,
    parent_run,
)
from vilocal_dist.errors import ConfigError
from vilocal_dist.tracking.lineage import log_dataset_output
from vilocal_dist.tracking.runs import log_json
from vilocal_dist.tracking.sweep_report import to_csv, to_markdown

log = logging.getLogger(__name__)

EXPERIMENT = "vilocal-forge"
RECORD_KEY = "manifest_record"  # a trial's result: its stored video's record, as JSON


@dataclass(frozen=True)
class ForgeOptions:
    """How a forge runs (the jobs themselves come from ``plan_jobs``)."""

    out: str  # forged dataset: absolute folder or storage URI
    seed: int = 0  # method seeds and the split hash
    test_fraction: float = 0.25  # share of SOURCE VIDEOS in the test split
    size_h: int = 0  # resize sources on load; 0 = native
    size_w: int = 0
    max_frames: int = 0  # 0 = every frame
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0 = what the cluster's CPUs (and GPUs) allow
    retries: int = 2  # Tune restarts of a failed trial


@dataclass
class ForgeSummary:
    planned: int  # (video, method) pairs asked for
    skipped: int  # already complete before this run
    ran: int  # trials in this run's experiment
    failed: list[str] = field(default_factory=list)  # job ids whose trial errored
    experiment_path: str | None = None
    complete: bool = True  # False when interrupted: rerunning the same command continues


def expand_sources(
    items: Sequence[str], *, composed: int = 0, frames: int = 24, size: tuple[int, int] = (240, 432), seed: int = 0
) -> list[tuple[str, str]]:
    """(video name, spec that reopens it) for every video: a DAVIS root expands to its sequences,
    ``composed`` adds ``composed:SEED:FRAMES:HxW`` videos with seeds ``seed … seed+composed-1``."""
    from vilocal_dist.data.sources import is_davis_root, list_sequences, open_source

    videos: list[tuple[str, str]] = []
    for item in items:
        if not item.startswith("composed:") and is_davis_root(item):
            for seq in list_sequences(item):
                src = open_source(item, seq=seq)
                videos.append((src.name, src.spec))
        else:
            src = open_source(item)
            videos.append((src.name, src.spec))
    h, w = size
    videos += [(f"composed-{seed + i}", f"composed:{seed + i}:{frames}:{h}x{w}") for i in range(composed)]
    names = [n for n, _ in videos]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"two sources share the video name(s) {dupes}; forged ids would collide")
    return videos


def plan_jobs(
    videos: Sequence[tuple[str, str]],
    methods: Sequence[str],
    *,
    method_cfgs: Mapping[str, Mapping[str, Any]] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One job dict per (video, method): id, video, source, method, split, cfg (plain values)."""
    from vilocal_dist.data.manifest import split_for, video_id
    from vilocal_dist.inpaint.registry import check_method_config

    unknown = sorted(set(method_cfgs or {}) - set(methods))
    if unknown:
        raise ConfigError(f"--set names method(s) {unknown} that are not in --methods {list(methods)}")
    for method in methods:  # unknown names and bad options fail here, before Ray or any trial
        check_method_config(method, dict((method_cfgs or {}).get(method, {})))
    return [
        {
            "id": video_id(name, method),
            "video": name,
            "source": spec,
            "method": method,
            "split": split_for(name, test_fraction, seed),
            "cfg": dict((method_cfgs or {}).get(method, {})),
        }
        for name, spec in videos
        for method in methods
    ]


def _plan_hash(out: str, jobs: Sequence[Mapping[str, Any]], opts: ForgeOptions) -> str:
    text = json.dumps([out, sorted(json.dumps(j, sort_keys=True) for j in jobs), opts.seed, opts.size_h, opts.size_w, opts.max_frames])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def forge_trial(config: dict[str, Any]) -> None:
    """Tune trainable: forge one (video, method) job into the dataset (skips a complete one)."""
    from vilocal_dist.engines.forge import forge_video

    job, opts = config["job"], config["opts"]
    limit_threads(max(1, int(opts["cpus_per_trial"])))
    size = (opts["size_h"], opts["size_w"]) if opts["size_h"] else None
    start = time.perf_counter()
    record = forge_video(
        job["source"], job["method"], opts["out"], cfg=job["cfg"] or None, seed=opts["seed"],
        split=job["split"], size=size, max_frames=opts["max_frames"] or None, publish_record=False,
    )  # fmt: skip
    metrics = numeric_metrics(record.get("metrics", {}))
    tune.report({"seconds": time.perf_counter() - start, "frames": float(record.get("frames", 0)), **metrics,
                 RECORD_KEY: json.dumps(record, sort_keys=True)})  # fmt: skip


class ManifestPublisher(tune.Callback):
    """Driver side: appends each trial's record to the manifest as its result arrives.

    A publish that fails (storage briefly down) is kept and retried at the next event; ``flush``
    after the run retries what is left. Records are stored before they are reported, so a record
    this driver never publishes is not lost: the next run's trial finds the stored video.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.pending: list[dict[str, Any]] = []

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if RECORD_KEY in result:
            self.pending.append(json.loads(result[RECORD_KEY]))
        self._try()

    def _try(self) -> bool:
        from vilocal_dist.data.manifest import publish

        if not self.pending:
            return True
        try:
            publish(self.root, self.pending)
        except OSError as exc:
            log.warning("forge: publishing %d record(s) to %s failed (%s); will retry", len(self.pending), self.root, exc)
            return False
        self.pending = []
        return True

    def flush(self, records: Sequence[dict[str, Any]] = (), within_s: float = 120.0) -> None:
        """Publish what is pending plus ``records``, retrying storage errors for ``within_s``."""
        self.pending += list(records)
        deadline = time.monotonic() + within_s
        while not self._try():
            if time.monotonic() > deadline:
                raise OSError(f"could not publish {len(self.pending)} record(s) to {self.root}; "
                              "their videos are stored: rerun the same command to list them")  # fmt: skip
            time.sleep(2.0)


def _trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    job = config["job"]
    # cfg as one JSON param: its keys differ by method, and every trial should carry the same param keys.
    return {"video": job["video"], "method": job["method"], "split": job["split"], "source": job["source"],
            "cfg": json.dumps(job["cfg"], sort_keys=True)}


def _trial_name(trial: Any) -> str:
    return trial.config["job"]["id"]


def _trial_dirname(trial: Any) -> str:
    """``<job id>_<trial id>``: a trial's folder (and its worker's cwd) says which video it forges."""
    return f"{trial.config['job']['id']}_{trial.trial_id}".replace("/", "_")


def _tuner(jobs: list[dict[str, Any]], opts: ForgeOptions, name: str, callbacks: list, path: str, resume: bool) -> tune.Tuner:
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    trainable = tune.with_resources(forge_trial, resources)
    if resume:
        # Function trials keep no checkpoint: errored ones restart from scratch (the dataset
        # itself is the checkpoint: finished videos are skipped inside forge_video). The restored
        # experiment brings its own callbacks (the MLflow logger of the same parent run).
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
    concurrency = default_concurrency(opts.cpus_per_trial, opts.gpus_per_trial, opts.max_concurrent)
    return tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search(jobs), "opts": asdict(opts)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency, trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=path.rsplit("/", 1)[0],
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=opts.retries),
            verbose=tune_verbosity(),
        ),
    )


def forge(jobs: list[dict[str, Any]], opts: ForgeOptions, *, address: str | None = None, num_cpus: int | None = None) -> ForgeSummary:
    """Run every job not yet in the manifest at ``opts.out`` (resuming an interrupted forge of the
    same plan). Ray is started (or joined at ``address``) only when there is work."""
    from vilocal_dist.data.manifest import ForgedDataset

    done = ForgedDataset(opts.out).completed_ids()
    pending = [j for j in jobs if j["id"] not in done]
    summary = ForgeSummary(planned=len(jobs), skipped=len(jobs) - len(pending), ran=0)
    if not pending:
        log.info("forge: all %d videos already complete in %s; nothing to do", len(jobs), opts.out)
        return summary
    phase(f"forge: {len(pending)} forged videos to make ({summary.skipped} already complete) → {opts.out}")
    init_ray(address, num_cpus)
    default_concurrency(opts.cpus_per_trial, opts.gpus_per_trial, opts.max_concurrent)  # impossible: fail before any record
    name = f"forge-{_plan_hash(opts.out, jobs, opts)}"
    path = experiment_path(name)
    resume = can_resume(path)
    summary.experiment_path = path
    params = {"out": opts.out, "jobs": len(jobs), "pending": len(pending), **asdict(opts)}
    with parent_run(EXPERIMENT, name, path=path, resume=resume, params=params, tags={"vilocal.kind": "forge"}) as run:
        logger = MLflowTrialLogger(
            experiment=EXPERIMENT, parent_run_id=run.info.run_id, params_of=_trial_params, run_name_of=_trial_name
        )
        publisher = ManifestPublisher(opts.out)
        try:
            callbacks = [logger, SessionBudget(), TrialProgress(len(pending), "forge", unit="video"), publisher]
            results = _tuner(pending, opts, name, callbacks, path, resume).fit()
        finally:
            close_open_children(run.info.run_id, EXPERIMENT)
        # Every finished trial's record once more (the restored experiment of a resumed forge
        # brings its own publisher): publishing is idempotent.
        publisher.flush([json.loads(r.metrics[RECORD_KEY]) for r in results if RECORD_KEY in (r.metrics or {})])
        rows = []
        for result in results:
            job = (result.config or {}).get("job", {})
            status = "ERROR" if result.error else "TERMINATED"
            if result.error:
                summary.failed.append(job.get("id", "?"))
            metrics = numeric_metrics(result.metrics or {})
            rows.append({"id": job.get("id"), "video": job.get("video"), "method": job.get("method"),
                         "split": job.get("split"), "status": status, "seconds": metrics.get("seconds")})  # fmt: skip
        summary.ran = len(rows)
        summary.complete = is_complete(results, 0 if resume else len(pending))
        import mlflow

        columns = ["id", "video", "method", "split", "status", "seconds"]
        mlflow.log_text(to_csv(rows, columns), "results.csv")
        mlflow.log_text(to_markdown(rows, columns), "results.md")
        log_json(asdict(summary), "forge_summary.json")
        mlflow.log_metrics({"forge/planned": summary.planned, "forge/skipped": summary.skipped,
                            "forge/failed": len(summary.failed)})  # fmt: skip
        log_dataset_output(run.info.run_id, opts.out)  # train and evaluate runs link back to this run
    return summary
