"""The forged-dataset factory: Tune trials over the (video, method) pairs, each forging one video or a shard.

Plan → skip → fan out:

1. ``expand_sources`` turns DAVIS roots, sequence folders, video files and ``--composed N`` into
   (name, spec) pairs; ``plan_jobs`` crosses them with the methods and assigns each source video
   one split (by source video, never by clip: all forgeries of a scene share a split).
2. Jobs whose id is already in the manifest are dropped before any trial exists, so a rerun of a
   finished forge starts no Tuner at all (and ``forge_video`` itself skips complete videos too).
3. The rest run as a grid of trials (``tune.grid_search`` over lists of job dicts; no search
   algorithm) with declared resources (fractional GPUs pack several videos on one GPU), a
   concurrency cap and retries. A trial forges one video, or for large forges a shard of them
   (``shard_size``): Tune's bookkeeping per trial, not the videos, would otherwise bound a
   10,000-video forge (``vilocal bench --only scale`` measures both). Trials reuse their actors
   (no process start per trial). The experiment folder name is a hash of the whole plan, so
   rerunning the same command after an interruption finds it and ``Tuner.restore`` continues it.

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
per video: per trial by the driver-side ``MLflowTrialLogger``, per video of a shard by
``VideoRunLogger`` (off the event loop; a resume backfills runs a killed driver still had queued); the parent logs the dataset as an
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
#: A trial's result: the videos it stored since its last report, as a JSON list of
#: ``{"record": manifest record, "seconds": forging time}``.
RECORD_KEY = "manifest_records"
REPORT_EVERY_S = 10.0  # a shard reports at most this often: each report costs the driver ~0.3 s


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
    videos_per_trial: int = 0  # videos one trial forges in turn; 0 = auto (see shard_size)


@dataclass
class ForgeSummary:
    planned: int  # (video, method) pairs asked for
    skipped: int  # already complete before this run
    ran: int  # trials in this run's experiment
    failed: list[str] = field(default_factory=list)  # job ids whose trial errored
    experiment_path: str | None = None
    complete: bool = True  # False when interrupted: rerunning the same command continues
    videos_per_trial: int = 1
    stats: dict[str, float] = field(default_factory=dict)  # driver-side costs (manifest, MLflow)


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


def shard_size(pending: int, concurrency: int, requested: int = 0) -> int:
    """Videos per trial: ``requested``, else one per trial for small forges, and for large ones
    enough that each concurrent slot runs about 8 trials (at most 50 videos each). Tune costs the
    driver about as much per trial as a tiny video takes, so 10,000 one-video trials would leave
    the cluster waiting on the driver; 8 trials per slot keep the tail short when shards differ."""
    if requested:
        return requested
    return max(1, min(50, pending // (8 * max(1, concurrency))))


def forge_trial(config: dict[str, Any]) -> None:
    """Tune trainable: forge the trial's (video, method) jobs in turn into the dataset (a retried
    trial skips the videos already complete). Stored videos are reported in batches, at the end
    and at most every ``REPORT_EVERY_S``: a Tune report per tiny video would cost the driver
    more than the video. A one-video trial reports that video's metrics as its own."""
    from vilocal_dist.engines.forge import forge_video

    opts, jobs = config["opts"], config["jobs"]
    limit_threads(max(1, int(opts["cpus_per_trial"])))
    size = (opts["size_h"], opts["size_w"]) if opts["size_h"] else None
    batch: list[dict[str, Any]] = []
    last_report = time.monotonic()
    for index, job in enumerate(jobs):
        start = time.perf_counter()
        record = forge_video(
            job["source"], job["method"], opts["out"], cfg=job["cfg"] or None, seed=opts["seed"],
            split=job["split"], size=size, max_frames=opts["max_frames"] or None, publish_record=False,
        )  # fmt: skip
        batch.append({"record": record, "seconds": time.perf_counter() - start})
        if index + 1 < len(jobs) and time.monotonic() - last_report < REPORT_EVERY_S:
            continue
        own = numeric_metrics(record.get("metrics", {})) if len(jobs) == 1 else {}
        tune.report({"seconds": sum(b["seconds"] for b in batch), "videos": float(len(batch)),
                     "frames": float(sum(b["record"].get("frames", 0) for b in batch)), **own,
                     RECORD_KEY: json.dumps(batch, sort_keys=True)})  # fmt: skip
        batch, last_report = [], time.monotonic()


def reported_videos(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``{"record", "seconds"}`` items a trial result carries (none for other results)."""
    return json.loads(result[RECORD_KEY]) if RECORD_KEY in result else []


def reported_ids(result: Mapping[str, Any]) -> list[str]:
    return [item["record"]["id"] for item in reported_videos(result)]


#: Driver-side figures of the last forge in this process (the forge summary and benchmarks
#: read them; a resumed Tuner brings pickled callbacks, so they cannot live on the callbacks).
STATS: dict[str, Any] = {}


class ManifestPublisher(tune.Callback):
    """Driver side: appends the trials' records to the manifest as their results arrive.

    Records are published in batches at most every ``every_s`` seconds: each publish reads the
    manifest, so one per video would make a 10,000-video forge quadratic. A publish that fails
    (storage briefly down) is kept and retried at the next event; ``flush`` after the run
    publishes what is left. Records are stored before they are reported, so a record this driver
    never publishes is not lost: the next run's trial finds the stored video.
    """

    def __init__(self, root: str, every_s: float = 2.0) -> None:
        self.root, self.every_s = root, every_s
        self.pending: list[dict[str, Any]] = []
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last": 0.0}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        items = reported_videos(result)
        if items and "first_result_s" not in STATS:
            STATS["first_result_s"] = time.perf_counter() - STATS.get("t0", 0.0)
        for item in items:
            self.pending.append(item["record"])
            STATS.setdefault("seconds", {})[item["record"]["id"]] = float(item["seconds"])
        if time.monotonic() - self._last >= self.every_s:
            self._try()

    def _try(self) -> bool:
        from vilocal_dist.data.manifest import publish

        if not self.pending:
            return True
        start = time.perf_counter()
        self._last = time.monotonic()
        try:
            publish(self.root, self.pending)
        except OSError as exc:
            log.warning("forge: publishing %d record(s) to %s failed (%s); will retry", len(self.pending), self.root, exc)
            return False
        STATS["publish_calls"] = STATS.get("publish_calls", 0) + 1
        STATS["published"] = STATS.get("published", 0) + len(self.pending)
        STATS["publish_s"] = STATS.get("publish_s", 0.0) + time.perf_counter() - start
        self.pending = []
        return True

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._try()  # what waits for the next batch (a failure here is retried by ``flush``)

    def flush(self, records: Sequence[dict[str, Any]] = (), within_s: float = 120.0) -> None:
        """Publish what is pending plus ``records``, retrying storage errors for ``within_s``."""
        self.pending += list(records)
        deadline = time.monotonic() + within_s
        while not self._try():
            if time.monotonic() > deadline:
                raise OSError(f"could not publish {len(self.pending)} record(s) to {self.root}; "
                              "their videos are stored: rerun the same command to list them")  # fmt: skip
            time.sleep(2.0)


def _job_params(job: Mapping[str, Any]) -> dict[str, Any]:
    # cfg as one JSON param: its keys differ by method, and every run should carry the same param keys.
    return {"video": job["video"], "method": job["method"], "split": job["split"], "source": job["source"],
            "cfg": json.dumps(job["cfg"], sort_keys=True)}


def _trial_curves(result: Mapping[str, Any]) -> list[tuple[int, dict[str, float]]]:
    """The learning curves of the videos a result reports, as stepped metrics."""
    from vilocal_dist.distributed.video_runs import curve_steps

    return [step for item in reported_videos(result) for step in curve_steps(item["record"].get("history") or [])]


def _trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    return _job_params(config["jobs"][0])


def _trial_jobs(trial: Any) -> list[dict[str, Any]]:
    return list(trial.config["jobs"])


def _trial_name(trial: Any) -> str:
    """The job id, or ``<first job id>+<n more>`` for a shard."""
    jobs = trial.config["jobs"]
    return jobs[0]["id"] + (f"+{len(jobs) - 1}" if len(jobs) > 1 else "")


def _trial_dirname(trial: Any) -> str:
    """``<job id>_<trial id>``: a trial's folder (and its worker's cwd) says which video(s) it forges."""
    return f"{_trial_name(trial)}_{trial.trial_id}".replace("/", "_")


def _tuner(shards: list[list[dict[str, Any]]], opts: ForgeOptions, concurrency: int, name: str, callbacks: list,
           path: str, resume: bool) -> tune.Tuner:
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    trainable = tune.with_resources(forge_trial, resources)
    if resume:
        # Function trials keep no checkpoint: errored ones restart from scratch (the dataset
        # itself is the checkpoint: finished videos are skipped inside forge_video). The restored
        # experiment brings its own callbacks (the MLflow logger of the same parent run).
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True)
    return tune.Tuner(
        trainable,
        param_space={"jobs": tune.grid_search(shards), "opts": asdict(opts)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency, trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname,
            # A fresh actor per trial costs a process start and the torch import, seconds per
            # video; the trials are stateless, so the next one runs in the same worker.
            reuse_actors=True,
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
    from vilocal_dist.distributed.video_runs import STATS as RUN_STATS
    from vilocal_dist.distributed.video_runs import VideoRunLogger

    STATS.clear()
    RUN_STATS.clear()
    begin = STATS["t0"] = time.perf_counter()
    done = ForgedDataset(opts.out).completed_ids()
    pending = [j for j in jobs if j["id"] not in done]
    summary = ForgeSummary(planned=len(jobs), skipped=len(jobs) - len(pending), ran=0)
    if not pending:
        log.info("forge: all %d videos already complete in %s; nothing to do", len(jobs), opts.out)
        return summary
    phase(f"forge: {len(pending)} forged videos to make ({summary.skipped} already complete) → {opts.out}")
    init_ray(address, num_cpus)
    # An impossible request fails here, before any record.
    concurrency = default_concurrency(opts.cpus_per_trial, opts.gpus_per_trial, opts.max_concurrent)
    # From the whole plan, not what is left: a resumed forge restores the shards it started with.
    per_trial = summary.videos_per_trial = shard_size(len(jobs), concurrency, opts.videos_per_trial)
    shards = [pending[i : i + per_trial] for i in range(0, len(pending), per_trial)]
    name = f"forge-{_plan_hash(opts.out, jobs, opts)}"
    path = experiment_path(name)
    resume = can_resume(path)
    summary.experiment_path = path
    params = {"out": opts.out, "jobs": len(jobs), "pending": len(pending), **asdict(opts), "videos_per_trial": per_trial}
    with parent_run(EXPERIMENT, name, path=path, resume=resume, params=params, tags={"vilocal.kind": "forge"}) as run:
        if per_trial == 1:  # a run per trial, with its config and result as artifacts
            logger: tune.Callback = MLflowTrialLogger(
                experiment=EXPERIMENT, parent_run_id=run.info.run_id, params_of=_trial_params, run_name_of=_trial_name,
                stepped_of=_trial_curves,
            )
        else:  # a run per video of each shard, written off the driver's event loop
            logger = VideoRunLogger(experiment=EXPERIMENT, parent_run_id=run.info.run_id, videos_of=reported_videos,
                                    params_of=_job_params, jobs_of=_trial_jobs)  # fmt: skip
        publisher = ManifestPublisher(opts.out)
        progress = TrialProgress(len(pending), "forge", unit="video", ids_of=reported_ids if per_trial > 1 else None)
        STATS["setup_s"] = time.perf_counter() - begin
        try:
            callbacks = [logger, SessionBudget(), progress, publisher]
            tuner = _tuner(shards, opts, concurrency, name, callbacks, path, resume)
            STATS["restore_s" if resume else "tuner_s"] = time.perf_counter() - begin - STATS["setup_s"]
            results = tuner.fit()
        finally:
            close_open_children(run.info.run_id, EXPERIMENT)
        STATS["fit_s"] = time.perf_counter() - begin - STATS["setup_s"]
        # Every finished trial's record once more (the restored experiment of a resumed forge
        # brings its own publisher): publishing is idempotent.
        publisher.flush([item["record"] for r in results for item in reported_videos(r.metrics or {})])
        listed = ForgedDataset(opts.out).records()
        if isinstance(logger, VideoRunLogger):
            logger.backfill(listed, {j["id"]: j for j in jobs})
        rows = _result_rows(results, {r["id"] for r in listed}, per_trial)
        summary.failed = [row["id"] for row in rows if row["status"] == "ERROR"]
        summary.ran = len(rows)
        summary.complete = is_complete(results, 0 if resume else len(shards))
        import mlflow

        columns = ["id", "video", "method", "split", "status", "seconds"]
        mlflow.log_text(to_csv(rows, columns), "results.csv")
        mlflow.log_text(to_markdown(rows, columns), "results.md")
        summary.stats = {k: v for k, v in STATS.items() if k not in ("seconds", "t0")}
        summary.stats.update({f"mlflow_{k}": v for k, v in RUN_STATS.items()}, trials=len(results), summary_s=0.0)
        log_json({k: v for k, v in asdict(summary).items() if k != "stats"} | {"stats": summary.stats}, "forge_summary.json")
        mlflow.log_metrics({"forge/planned": summary.planned, "forge/skipped": summary.skipped,
                            "forge/failed": len(summary.failed)})  # fmt: skip
        log_dataset_output(run.info.run_id, opts.out)  # train and evaluate runs link back to this run
        summary.stats["summary_s"] = round(time.perf_counter() - begin - STATS["setup_s"] - STATS["fit_s"], 3)
    return summary


def _result_rows(results: Any, completed: set[str], per_trial: int) -> list[dict[str, Any]]:
    """One row per job of the run's trials: TERMINATED when its video is in the manifest, ERROR
    when its trial failed every attempt before storing it, NOT_RUN when the run was interrupted."""
    seconds = STATS.get("seconds", {})
    rows = []
    for result in results:
        own = numeric_metrics(result.metrics or {}).get("seconds") if per_trial == 1 else None
        for job in (result.config or {}).get("jobs", []):
            status = "TERMINATED" if job["id"] in completed else "ERROR" if result.error else "NOT_RUN"
            rows.append({"id": job["id"], "video": job["video"], "method": job["method"], "split": job["split"],
                         "status": status, "seconds": own or seconds.get(job["id"])})  # fmt: skip
    return rows
