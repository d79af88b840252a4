"""Faults in the forge: killed writers, a killed Tune trial, a video that fails on every attempt.

How faults are injected (no fault hook exists in the production code):

* A writer killed mid-write or between rename and record: a real child process runs
  ``write_forged_video`` with one OS call wrapped to ``SIGKILL`` the process at that point.
* A Tune trial killed for real: the test holds the manifest's exclusive lock, so every trial
  finishes its temp folder and then blocks in ``_publish``, waiting for the lock. That makes the
  kill deterministic: the target trial's worker is the Ray worker (a descendant of this process,
  which started the local cluster) whose working directory is the target's trial folder
  (``<job id>_<trial id>``) and which holds the manifest open. It gets ``SIGKILL`` while its temp
  folder sits complete but unpublished; the lock is then released and the other trials, blocked
  meanwhile, carry on.
* A trial failing on every attempt: a source frame file overwritten with garbage (the header
  probe at planning reads only the first frame, so the trial itself hits it).

Forging with telea is deterministic, so a forge that survived faults must give byte-identical
files to an undisturbed one.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vilocal_dist.data import ForgedDataset, load_video, open_source, write_forged_video
from vilocal_dist.data.manifest import TMP_PREFIX

# ----------------------------------------------------------------------------- helpers


def _video(seed: int = 0, t: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (t, 16, 20, 3), dtype=np.uint8), rng.random((t, 16, 20)) < 0.2


def _record(source_video: str) -> dict:
    return {"source_video": source_video, "source": "test", "method": "telea", "split": "train", "config": {}, "seed": 0}


def check_dataset(root: Path) -> list[dict]:
    """Every manifest record's folder is complete (frame and mask files, provenance = record) and
    videos/ holds nothing but published folders and temp folders; returns the records."""
    records = ForgedDataset(root).records()
    for record in records:
        folder = root / record["path"]
        frames = sorted(p.name for p in (folder / "frames").glob("*.png"))
        masks = sorted(p.name for p in (folder / "masks").glob("*.png"))
        assert frames == masks == [f"{i:05d}.png" for i in range(record["frames"])], record["id"]
        assert json.loads((folder / "provenance.json").read_text()) == record
        assert sorted(p.name for p in folder.iterdir()) == ["frames", "masks", "provenance.json"]
    return records


def temp_folders(root: Path) -> list[str]:
    videos = root / "videos"
    return sorted(p.name for p in videos.iterdir() if p.name.startswith(TMP_PREFIX)) if videos.is_dir() else []


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every frame and mask file of a forged video folder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for sub in ("frames", "masks") for p in sorted((folder / sub).glob("*.png"))
    }  # fmt: skip


#: A child that writes one forged video and SIGKILLs itself at the OS call named by argv[2].
_DYING_WRITER = r"""
import os, signal, sys
import numpy as np
from vilocal_dist.data import manifest

root, where = sys.argv[1], sys.argv[2]
real_replace, real_write = os.replace, os.write

def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if where == "after-rename" and os.path.basename(os.fspath(dst)) == "v0__telea":
        os.kill(os.getpid(), signal.SIGKILL)

def write(fd, data):
    if where == "mid-append" and data.lstrip().startswith(b'{"config"'):
        real_write(fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data)

real_png = manifest.write_png_folder
def png_folder(folder, images, **kwargs):
    if where == "mid-write" and os.path.basename(os.fspath(folder)) == "masks":
        os.kill(os.getpid(), signal.SIGKILL)  # frames written, masks and provenance not
    return real_png(folder, images, **kwargs)

os.replace, os.write, manifest.write_png_folder = replace, write, png_folder
rng = np.random.default_rng(0)
frames, masks = rng.integers(0, 256, (3, 16, 20, 3), dtype=np.uint8), rng.random((3, 16, 20)) < 0.2
record = {"source_video": "v0", "source": "test", "method": "telea", "split": "train", "config": {}, "seed": 0}
manifest.write_forged_video(root, record, frames, masks)
print("survived")
"""


def _run_dying_writer(root: Path, where: str) -> None:
    done = subprocess.run([sys.executable, "-c", _DYING_WRITER, str(root), where], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, (where, done.returncode, done.stderr[-2000:])


# ----------------------------------------------------------------------------- atomic publish


@pytest.mark.parametrize("where", ["mid-write", "after-rename", "mid-append"])
def test_writer_killed_leaves_no_listed_video_and_a_rerun_completes(tmp_path: Path, where: str) -> None:
    frames, masks = _video()
    write_forged_video(tmp_path, _record("other"), *_video(seed=5))  # a video finished before the crash
    _run_dying_writer(tmp_path, where)

    records = check_dataset(tmp_path)  # the survivor intact, nothing listed that is not complete
    assert [r["id"] for r in records] == ["other__telea"]
    if where == "mid-write":  # half a video: only under a hidden temp name, never at videos/<id>
        assert not (tmp_path / "videos" / "v0__telea").exists()
        [leftover] = temp_folders(tmp_path)
        assert leftover.startswith(".tmp-v0__telea-")
        assert (tmp_path / "videos" / leftover / "frames").is_dir()
        assert not (tmp_path / "videos" / leftover / "provenance.json").exists()
    else:  # renamed, but unannounced: readers go by the manifest only
        assert (tmp_path / "videos" / "v0__telea" / "frames").is_dir() and temp_folders(tmp_path) == []
    if where == "mid-append":
        assert not (tmp_path / "manifest.jsonl").read_text().endswith("\n")  # the torn line is there

    record = write_forged_video(tmp_path, _record("v0"), frames, masks)  # the rerun
    records = check_dataset(tmp_path)
    assert [r["id"] for r in records] == ["other__telea", "v0__telea"] and records[1] == record
    assert temp_folders(tmp_path) == []  # the dead writer's temp folder was swept
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["other__telea", "v0__telea"]
    got_frames, got_masks = load_video(open_source(tmp_path / "videos" / "v0__telea"))
    assert np.array_equal(got_frames, frames) and np.array_equal(got_masks, masks)


_BLOCKED_WRITER = r"""
import sys
from vilocal_dist.data import ForgedDataset, manifest
tmp, fd = manifest._claim_tmp(ForgedDataset(sys.argv[1]), "slow__telea")
(tmp / "frames").mkdir()
print(tmp, flush=True)
sys.stdin.readline()  # a writer still busy: blocks until the test kills it
"""


def test_sweep_spares_live_writers_and_removes_dead_ones(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _BLOCKED_WRITER, str(tmp_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        busy = Path(child.stdout.readline().strip())
        assert busy.parent == tmp_path / "videos" and busy.name.startswith(".tmp-slow__telea-")
        write_forged_video(tmp_path, _record("a"), *_video())  # sweeps: the live writer's folder stays
        assert busy.is_dir() and temp_folders(tmp_path) == [busy.name]
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    write_forged_video(tmp_path, _record("b"), *_video())  # now its writer is dead: swept
    assert temp_folders(tmp_path) == [] and not busy.exists()
    assert [r["id"] for r in check_dataset(tmp_path)] == ["a__telea", "b__telea"]


def test_method_checkpoints_survive_a_failed_attempt_and_go_once_published(tmp_path: Path, monkeypatch) -> None:
    """forge_video's workdir: a retry finds the checkpoint the failed attempt left; once the video
    is in the dataset the workdir is removed."""
    from vilocal_dist.engines.forge import forge_video
    from vilocal_dist.inpaint import registry
    from vilocal_dist.inpaint.base import InpaintResult

    seen: list[bool] = []

    def checkpointing(frames, masks, cfg=None, *, seed=0, progress=True, workdir=None):
        ckpt = workdir / "ckpt.bin"
        seen.append(ckpt.exists())
        if not ckpt.exists():
            workdir.mkdir(parents=True)
            ckpt.write_bytes(b"half-way state")
            raise RuntimeError("worker lost mid-fit")
        return InpaintResult(frames=np.where(masks[..., None], 0, frames).astype(np.uint8), config={})

    monkeypatch.setitem(registry.BUILTIN, "ckpt-test", checkpointing)
    with pytest.raises(RuntimeError, match="mid-fit"):
        forge_video("composed:3:4:32x48", "ckpt-test", tmp_path, split="train")
    assert (tmp_path / ".work" / "composed-3__ckpt-test" / "ckpt.bin").is_file()
    assert ForgedDataset(tmp_path).records() == [] and temp_folders(tmp_path) == []  # nothing published

    record = forge_video("composed:3:4:32x48", "ckpt-test", tmp_path, split="train")  # the retry
    assert seen == [False, True]  # it resumed from the checkpoint
    assert [r["id"] for r in check_dataset(tmp_path)] == [record["id"]] == ["composed-3__ckpt-test"]
    assert not (tmp_path / ".work" / "composed-3__ckpt-test").exists()


# ----------------------------------------------------------------------------- Tune trials


class TrialKiller(threading.Thread):
    """Holds the manifest lock until the trial of ``target`` waits for it, SIGKILLs that trial's
    worker process, then releases the lock (see the module docstring)."""

    def __init__(self, out: Path, target: str, deadline_s: float = 240.0) -> None:
        super().__init__(daemon=True)
        import fcntl

        self.out, self.target, self.deadline_s = out, target, deadline_s
        out.mkdir(parents=True, exist_ok=True)
        self.manifest = out / "manifest.jsonl"
        self.lock_fd = os.open(self.manifest, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)  # taken before the forge starts
        self.killed_pid: int | None = None
        self.killed_tmp: str | None = None
        self.tmp_files: list[str] = []
        self.error: str | None = None

    def _find_worker(self):
        import psutil

        for proc in psutil.Process().children(recursive=True):
            try:
                if not Path(proc.cwd()).name.startswith(f"{self.target}_"):
                    continue
                if any(Path(f.path) == self.manifest for f in proc.open_files()):
                    return proc
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.deadline_s
            while time.monotonic() < deadline:
                tmp = [n for n in temp_folders(self.out) if n.startswith(f"{TMP_PREFIX}{self.target}-")]
                worker = self._find_worker() if tmp else None
                if worker is not None and (self.out / "videos" / tmp[0] / "provenance.json").is_file():
                    self.killed_tmp = tmp[0]
                    self.tmp_files = sorted(str(p.relative_to(self.out / "videos" / tmp[0]))
                                            for p in (self.out / "videos" / tmp[0]).rglob("*") if p.is_file())  # fmt: skip
                    self.killed_pid = worker.pid
                    worker.send_signal(signal.SIGKILL)
                    worker.wait(timeout=30)
                    return
                time.sleep(0.2)
            self.error = f"no trial of {self.target} blocked on the manifest within {self.deadline_s}s"
        except Exception as exc:  # reported by the test, not lost in the thread
            self.error = repr(exc)
        finally:
            os.close(self.lock_fd)  # releases the lock: the other trials go on


def _children(experiment: str) -> dict[str, list]:
    """The child runs of the experiment by run name (= job id), oldest first."""
    import mlflow

    from vilocal_dist.tracking.setup import tracking_uri

    client = mlflow.MlflowClient(tracking_uri=tracking_uri())
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([exp_id], order_by=["attributes.start_time ASC"])
    by_name: dict[str, list] = {}
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            by_name.setdefault(run.info.run_name, []).append(run)
    return by_name


def _reference(jobs: list[dict], root: Path) -> None:
    """The same plan forged without Ray or faults: what ``forge_trial`` calls, job by job."""
    from vilocal_dist.engines.forge import forge_video

    for job in jobs:
        forge_video(job["source"], job["method"], root, cfg=job["cfg"] or None, seed=0, split=job["split"])


def _same_content(out: Path, ref: Path, ids: list[str]) -> None:
    volatile = {"created", "versions", "seconds"}  # when and how fast it was made, not what
    for vid in ids:
        got, want = out / "videos" / vid, ref / "videos" / vid
        assert checksums(got) == checksums(want) and len(checksums(got)) > 0, vid
        a, b = (json.loads((d / "provenance.json").read_text()) for d in (got, want))
        assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}


@pytest.mark.ray
def test_killed_trial_is_retried_and_the_dataset_matches_an_undisturbed_forge(ray_local, mlflow_home, tmp_path):
    import psutil

    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs

    out = tmp_path / "forged"
    jobs = plan_jobs(expand_sources([], composed=2, frames=4, size=(32, 48)), ["telea", "ns"])
    target = "composed-1__telea"
    killer = TrialKiller(out, target)
    killer.start()
    try:
        summary = forge(jobs, ForgeOptions(out=str(out), retries=1, max_concurrent=len(jobs)))
    finally:
        killer.join(timeout=60)
    assert killer.error is None, killer.error
    # The worker died while its video sat complete but unpublished in its temp folder.
    assert killer.killed_pid is not None and not psutil.pid_exists(killer.killed_pid)
    assert "provenance.json" in killer.tmp_files and "frames/00003.png" in killer.tmp_files

    assert (summary.planned, summary.skipped, summary.ran, summary.failed, summary.complete) == (4, 0, 4, [], True)
    records = check_dataset(out)
    assert len(records) == 4 and sorted(r["id"] for r in records) == sorted(j["id"] for j in jobs)
    assert not (out / "videos" / killer.killed_tmp).exists() and temp_folders(out) == []  # swept by the retry
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(j["id"] for j in jobs)

    children = _children("vilocal-forge")
    assert sorted(children) == sorted(j["id"] for j in jobs)
    assert all(len(runs) == 1 for runs in children.values())  # one child run per job, the retry inside it
    assert all(runs[0].info.status == "FINISHED" for runs in children.values())
    assert children[target][0].data.tags.get("tune.retries") == "1"
    assert all("tune.retries" not in runs[0].data.tags for name, runs in children.items() if name != target)

    ref = tmp_path / "reference"
    _reference(jobs, ref)
    _same_content(out, ref, [j["id"] for j in jobs])
    before = checksums(ref / "videos" / target)
    _reference(jobs, tmp_path / "reference-again")  # telea and ns are deterministic: same bytes again
    assert checksums(tmp_path / "reference-again" / "videos" / target) == before


@pytest.mark.ray
def test_video_failing_every_attempt_is_reported_and_a_rerun_forges_only_it(ray_local, mlflow_home, tmp_path):
    from vilocal_dist.data.composed import write_composed_dataset
    from vilocal_dist.distributed.forge import ForgeOptions, expand_sources, forge, plan_jobs

    davis = tmp_path / "davis"
    write_composed_dataset(davis, videos=3, frames=4, size=(32, 48), progress=False)
    broken = davis / "JPEGImages" / "480p" / "composed-s0-001" / "00002.png"
    good_bytes = broken.read_bytes()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)  # a corrupt frame: every attempt fails

    out = tmp_path / "forged"
    jobs = plan_jobs(expand_sources([str(davis)]), ["telea"])
    bad = "composed-s0-001__telea"
    assert bad in {j["id"] for j in jobs} and len(jobs) == 3
    opts = ForgeOptions(out=str(out), retries=1, max_concurrent=2)
    first = forge(jobs, opts)
    assert (first.planned, first.skipped, first.failed, first.complete) == (3, 0, [bad], True)
    records = check_dataset(out)
    assert sorted(r["id"] for r in records) == sorted(j["id"] for j in jobs if j["id"] != bad)
    assert not (out / "videos" / bad).exists() and temp_folders(out) == []
    children = _children("vilocal-forge")
    assert [(r.info.status, r.data.tags.get("tune.retries")) for r in children[bad]] == [("FAILED", "1")]
    assert all([r.info.status for r in children[rec["id"]]] == ["FINISHED"] for rec in records)
    kept = {r["id"]: checksums(out / r["path"]) for r in records}
    kept_mtimes = {p: p.stat().st_mtime_ns for r in records for p in (out / r["path"]).rglob("*")}

    broken.write_bytes(good_bytes)  # the input fixed
    second = forge(jobs, opts)  # the same command: the errored trial alone runs again
    assert second.experiment_path == first.experiment_path
    assert (second.planned, second.skipped, second.failed, second.complete) == (3, 2, [], True)
    records = check_dataset(out)
    assert len(records) == 3 and sorted(r["id"] for r in records) == sorted(j["id"] for j in jobs)
    assert {vid: checksums(out / "videos" / vid) for vid in kept} == kept
    assert {p: p.stat().st_mtime_ns for p in kept_mtimes} == kept_mtimes  # the finished ones untouched
    # Tune gives a restarted errored trial a new trial id, hence a new child run: the failed
    # attempts keep their FAILED record, the rerun has its own.
    children = _children("vilocal-forge")
    assert [r.info.status for r in children[bad]] == ["FAILED", "FINISHED"]
    assert all(len(children[vid]) == 1 for vid in kept)  # the finished videos: no new run

    ref = tmp_path / "reference"
    _reference(jobs, ref)
    _same_content(out, ref, [j["id"] for j in jobs])
