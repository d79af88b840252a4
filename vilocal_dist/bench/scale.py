"""Scale benchmark: the forge fan-out from 100 to 10,000 (video, method) pairs, driver costs per video.

Every case forges N composed videos (4 frames at 32×48, ``telea``: the cheapest real method, so
what is measured is the fan-out, not the inpainting) through the real path: Tune trials, stored
videos, the driver's manifest and one MLflow child run per video. Each case runs in a fresh child
process with its own home (MLflow store, Ray results), on a local Ray of 2 CPUs, 2 trials at once.

Per case: wall time; ``overhead_per_video_s`` = (2 slots × the fan-out's wall time − the seconds
the trials spent forging) / N, the slot time each video costs beyond its own work; the driver's
CPU seconds per video and its peak RSS; Tune's experiment state (largest size, writes per
minute); the manifest (publishes, ms per record); MLflow child runs written per second; and the
invariants: every (video, method) exactly once in the manifest and once FINISHED in MLflow.

Cases: ``--n`` with the automatic videos per trial, the same with one video per trial up to
``--control-n`` (the choice this measures), a loopback MLflow tracking server at ``--server-n``, and a
resume at ``--resume-n``: a forge whose driver and Ray processes are SIGKILLed once half the
videos are listed, then the same forge again; it reports the restore time and how many finished
videos were redone (the target is none). ``--ui-probe`` also times what the MLflow UI's
experiment page waits for over the largest case's store (``probe_ui``).

    python -m vilocal_dist.bench.scale --n 100,1000,10000 --json --plot scale.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

FRAMES, SIZE, METHOD, SLOTS = 4, (32, 48), "telea", 2


# --- one case, in a child process ----------------------------------------------------------------


class _StateWatch(threading.Thread):
    """Polls Tune's experiment-state files under ``root``: largest size and how often they change."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.max_bytes, self.writes = root, 0, 0
        self._seen: dict[str, int] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.25):
            for path in self.root.glob("*/experiment_state*.json"):
                try:
                    stat = path.stat()
                except OSError:
                    continue
                if self._seen.get(str(path)) != stat.st_mtime_ns:
                    self._seen[str(path)] = stat.st_mtime_ns
                    self.writes += 1
                    self.max_bytes = max(self.max_bytes, stat.st_size)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _jobs(n: int) -> list[dict[str, Any]]:
    from vilocal_dist.distributed.forge import expand_sources, plan_jobs

    return plan_jobs(expand_sources([], composed=n, frames=FRAMES, size=SIZE), [METHOD])


def _options(out: Path, per_trial: int) -> Any:
    from vilocal_dist.distributed.forge import ForgeOptions

    return ForgeOptions(out=str(out), max_concurrent=SLOTS, retries=1, videos_per_trial=per_trial)


def _mlflow_counts(uri: str) -> dict[str, int]:
    """FINISHED child runs of the forge experiment per video id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("vilocal-forge")
    counts: dict[str, int] = {}
    token = None
    while exp is not None:
        page = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                                  max_results=5000, page_token=token)
        for run in page:
            if "mlflow.parentRunId" in run.data.tags:
                vid = run.data.tags.get("vilocal.video_id", run.info.run_name)
                counts[vid] = counts.get(vid, 0) + 1
        token = page.token
        if not token:
            break
    return counts


def _invariants(out: Path, jobs: Sequence[dict[str, Any]], uri: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    ids = [r["id"] for r in lines]
    want = {j["id"] for j in jobs}
    runs = _mlflow_counts(uri)
    return {
        "manifest_records": len(ids), "manifest_exactly_once": sorted(ids) == sorted(want),
        "mlflow_runs": sum(runs.values()), "mlflow_exactly_once": set(runs) == want and set(runs.values()) == {1},
    }  # fmt: skip


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Forge ``case["n"]`` videos in a fresh home under ``case["dir"]``; the figures of one forge."""
    from vilocal_dist.bench.detect import peak_rss_mib
    from vilocal_dist.distributed.forge import STATS as FORGE_STATS
    from vilocal_dist.distributed.forge import forge
    from vilocal_dist.tracking.setup import storage_path, tracking_uri

    root = Path(case["dir"])
    os.environ["VILOCAL_HOME"] = str(root / "home")
    os.environ.pop("VILOCAL_STORAGE", None)
    os.environ.pop("RAY_ADDRESS", None)
    if case.get("uri"):
        os.environ["MLFLOW_TRACKING_URI"] = case["uri"]
    else:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    out, jobs = root / "out", _jobs(case["n"])
    watch = _StateWatch(Path(storage_path()))
    watch.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    summary = forge(jobs, _options(out, case["per_trial"]), num_cpus=SLOTS)
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    watch.stop()
    n = case["n"] - summary.skipped
    stats = summary.stats
    work = float(sum(FORGE_STATS.get("seconds", {}).values()))  # the trials' own forging time
    fit = stats.get("fit_s", wall)
    result = {
        "n": case["n"], "forged": n, "tracking": "server" if case.get("uri") else "sqlite",
        "videos_per_trial": summary.videos_per_trial, "trials": stats.get("trials"), "failed": len(summary.failed),
        "wall_s": round(wall, 2), "setup_s": round(stats.get("setup_s", 0.0), 2), "fit_s": round(fit, 2),
        "summary_s": stats.get("summary_s"), "restore_s": round(stats["restore_s"], 2) if "restore_s" in stats else None,
        "first_result_s": round(stats["first_result_s"], 2) if "first_result_s" in stats else None,
        "work_s": round(work, 2),
        "overhead_per_video_s": round((SLOTS * fit - work) / max(n, 1), 4),
        "driver_cpu_per_video_s": round((cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / max(n, 1), 4),
        "driver_peak_rss_mib": round(peak_rss_mib(), 1),
        "tune_state_max_bytes": watch.max_bytes, "tune_state_writes": watch.writes,
        "tune_state_writes_per_min": round(60 * watch.writes / max(fit, 1e-9), 2),
        "manifest_publishes": stats.get("publish_calls", 0),
        "manifest_ms_per_record": round(1000 * stats.get("publish_s", 0.0) / max(stats.get("published", 0), 1), 3),
        "manifest_bytes": (out / "manifest.jsonl").stat().st_size,
        "mlflow_runs_written": stats.get("mlflow_runs"),
        "mlflow_runs_per_s": round(stats["mlflow_runs"] / stats["mlflow_write_s"], 1) if stats.get("mlflow_write_s") else None,
        "mlflow_lookup_s": round(stats.get("mlflow_lookup_s", 0.0), 3),
    }  # fmt: skip
    result.update(_invariants(out, jobs, tracking_uri()))
    if case.get("ui_probe") and not case.get("uri"):
        result["ui"] = probe_ui(root / "ui-server", Path(os.environ["VILOCAL_HOME"]) / "mlflow.db")
    return result


def _timed(url: str, body: dict[str, Any] | None = None) -> tuple[float, bytes]:
    """Seconds to GET ``url`` (POST ``body`` as JSON) and read the whole answer; the answer."""
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as answer:
        payload = answer.read()
    return time.perf_counter() - start, payload


def _timed_json(url: str, body: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
    seconds, payload = _timed(url, body)
    return seconds, json.loads(payload or b"{}")


def probe_ui(folder: Path, db: Path) -> dict[str, Any]:
    """What the MLflow UI's experiment page waits for, against a loopback server over ``db``: the
    app's HTML, and the runs-table query it sends (the newest 100 runs), plus every run in pages of
    1,000 (what "load more" to the end, or a full export, costs)."""
    from vilocal_dist.tracking.local_server import LocalServer

    server = LocalServer(folder, db=db)
    start = time.perf_counter()
    server.start()
    try:
        started = time.perf_counter() - start
        html_s, _ = _timed(server.uri + "/")
        _, exp = _timed_json(f"{server.uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=vilocal-forge")
        query = {"experiment_ids": [exp["experiment"]["experiment_id"]], "order_by": ["attributes.start_time DESC"]}
        first_s, first = _timed_json(f"{server.uri}/ajax-api/2.0/mlflow/runs/search", {**query, "max_results": 100})
        total, pages, token, all_s = 0, 0, None, 0.0
        while True:
            seconds, page = _timed_json(f"{server.uri}/ajax-api/2.0/mlflow/runs/search",
                                        {**query, "max_results": 1000, **({"page_token": token} if token else {})})
            all_s += seconds
            total += len(page.get("runs", []))
            pages += 1
            token = page.get("next_page_token")
            if not token:
                break
    finally:
        server.stop()
    return {"server_start_s": round(started, 1), "html_s": round(html_s, 3), "first_100_runs_s": round(first_s, 3),
            "first_page_runs": len(first.get("runs", [])), "all_runs": total, "all_runs_s": round(all_s, 2),
            "all_pages": pages}  # fmt: skip


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def run_resume(case: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Kill a forge (driver and every Ray process under it) once half its videos are listed, then
    run the same forge again: what it restored, in what time, and what it redid."""
    root = Path(case["dir"])
    out, n = root / "out", case["n"]
    manifest = out / "manifest.jsonl"
    child = subprocess.Popen([sys.executable, "-m", "vilocal_dist.bench.scale", "--worker", json.dumps(case)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    listed = 0
    while listed < n // 2:
        if child.poll() is not None:
            raise RuntimeError(f"the forge to interrupt ended by itself (exit {child.returncode}) at {listed}/{n}")
        if time.monotonic() > deadline:
            child.kill()
            raise RuntimeError(f"the forge to interrupt listed only {listed}/{n} videos in {timeout:.0f} s")
        time.sleep(0.2)
        listed = sum(1 for _ in manifest.open()) if manifest.exists() else 0
    processes = _tree(child.pid)
    for proc in processes:
        try:
            proc.send_signal(signal.SIGKILL)
        except Exception:  # noqa: BLE001 - gone already
            pass
    child.wait()
    time.sleep(1.0)
    # Complete videos only: a ``.tmp-*`` folder is one the kill cut short (the next writer sweeps it).
    stored = {p.parent.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*/provenance.json")
              if not p.parent.name.startswith(".")}
    listed_at_kill = sum(1 for _ in manifest.open())
    resumed = _json_child([json.dumps(case)], timeout)
    redone = sum(1 for vid, mtime in stored.items() if (out / "videos" / vid / "provenance.json").stat().st_mtime_ns != mtime)
    return {**resumed, "killed_at_listed": listed_at_kill, "stored_at_kill": len(stored),
            "killed_processes": len(processes), "redone": redone}  # fmt: skip


# --- the driver ----------------------------------------------------------------------------------


def _json_child(args: list[str], timeout: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "vilocal_dist.bench.scale", "--worker", *args],
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"scale case {args} failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def plan_cases(ns: Sequence[int], *, control_n: int, server_n: int, resume_n: int,
               ui_probe: bool = False) -> list[dict[str, Any]]:
    """The cases to run: auto sharding at every N (the largest also probing the MLflow UI's
    queries with ``ui_probe``), one video per trial up to ``control_n``, a tracking server at
    ``server_n`` and a kill-and-resume at ``resume_n`` (0 = leave it out)."""
    cases = [{"n": n, "per_trial": 0, **({"ui_probe": True} if ui_probe and n == max(ns) else {})} for n in ns]
    cases += [{"n": n, "per_trial": 1, "label": "one per trial"} for n in ns if n <= control_n]
    if server_n:
        cases.append({"n": server_n, "per_trial": 0, "server": True})
    if resume_n:
        cases.append({"n": resume_n, "per_trial": 0, "resume": True})
    return cases


def run_all(cases: Sequence[dict[str, Any]], timeout: float, log: Any = None) -> list[dict[str, Any]]:
    from vilocal_dist.tracking.local_server import LocalServer

    results = []
    for case in cases:
        folder = Path(tempfile.mkdtemp(prefix=f"scale-{case['n']}-"))
        server = None
        try:
            case = {**case, "dir": str(folder)}
            if case.get("server"):
                server = LocalServer(folder / "mlflow-server")
                server.start()
                case["uri"] = server.uri
            if log:
                log(f"scale: {case['n']} videos, " + ("kill at 50 % and resume" if case.get("resume") else
                                                      case.get("label", "auto videos per trial")))
            result = run_resume(case, timeout) if case.get("resume") else _json_child([json.dumps(case)], timeout)
            results.append({**result, "label": case.get("label", "auto"), "resume": bool(case.get("resume"))})
        finally:
            if server:
                server.stop()
            shutil.rmtree(folder, ignore_errors=True)
    return results


def growth(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-video overhead at the largest N over the overhead at the next smaller N (auto, SQLite)."""
    rows = sorted((r for r in results if r["label"] == "auto" and not r["resume"] and r["tracking"] == "sqlite"),
                  key=lambda r: r["n"])
    if len(rows) < 2:
        return {}
    a, b = rows[-2], rows[-1]
    ratio = b["overhead_per_video_s"] / a["overhead_per_video_s"] if a["overhead_per_video_s"] > 0 else None
    return {"from_n": a["n"], "to_n": b["n"], "overhead_ratio": round(ratio, 2) if ratio else None,
            "flat": ratio is not None and ratio <= 2.0}


def plot(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Overhead per video and driver peak RSS against N, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for label in sorted({(r["label"], r["tracking"]) for r in results if not r["resume"]}):
        rows = sorted((r for r in results if (r["label"], r["tracking"]) == label and not r["resume"]), key=lambda r: r["n"])
        name = f"{label[0]}, {label[1]}"
        left.plot([r["n"] for r in rows], [r["overhead_per_video_s"] for r in rows], "o-", label=name)
        right.plot([r["n"] for r in rows], [r["driver_peak_rss_mib"] for r in rows], "o-", label=name)
    left.axhline(0.3, color="grey", linestyle="--", linewidth=1, label="target 0.3 s")
    for ax, title in ((left, "fan-out overhead per video (s)"), (right, "driver peak RSS (MiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("videos (trials × videos per trial)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: Sequence[dict[str, Any]]) -> list[str]:
    """A markdown table of the cases."""
    lines = ["| N | variant | MLflow | trials | wall s | overhead s/video | driver CPU s/video | driver RSS MiB | "
             "Tune state KiB (writes/min) | manifest ms/record | MLflow runs/s | exactly once |",
             "|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in results:
        variant = "kill at 50 %, resume" if r["resume"] else (
            f"{r['videos_per_trial']} per trial" + (" (auto)" if r["label"] == "auto" else ""))
        if r["resume"]:
            variant += f": {r['redone']} redone, first result after {r['first_result_s']} s"
        once = "yes" if r["manifest_exactly_once"] and r["mlflow_exactly_once"] else "NO"
        lines.append(
            f"| {r['n']:,} | {variant} | {r['tracking']} | {r['trials']} | {r['wall_s']:.0f} | "
            f"{r['overhead_per_video_s']:.3f} | {r['driver_cpu_per_video_s']:.3f} | {r['driver_peak_rss_mib']:.0f} | "
            f"{r['tune_state_max_bytes'] / 1024:.0f} ({r['tune_state_writes_per_min']:.0f}) | "
            f"{r['manifest_ms_per_record']:.2f} | {r['mlflow_runs_per_s'] or '–'} | {once} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vilocal_dist.bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", default="100,1000,10000", help="comma-separated video counts (default 100,1000,10000)")
    p.add_argument("--control-n", type=int, default=1000, help="one-video-per-trial runs up to this N (0: none)")
    p.add_argument("--server-n", type=int, default=1000, help="N of the loopback MLflow tracking server case (0: none)")
    p.add_argument("--resume-n", type=int, default=1000, help="N of the kill-and-resume case (0: none)")
    p.add_argument("--ui-probe", action="store_true",
                   help="time the MLflow UI's queries over the largest case's store (a loopback server)")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per case (default 7200)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", default=None, metavar="PNG", help="write the curve here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(run_case(json.loads(args.worker))))
        return 0
    try:
        ns = [int(x) for x in args.n.split(",") if x.strip()]
    except ValueError:
        p.error(f"--n {args.n!r}: write comma-separated integers, e.g. 100,1000")
    if not ns or min(ns) < 2:
        p.error("--n: every count must be at least 2")
    cases = plan_cases(ns, control_n=args.control_n, server_n=args.server_n, resume_n=args.resume_n,
                       ui_probe=args.ui_probe)
    results = run_all(cases, args.timeout, log=None if args.json else print)
    report = {"cases": results, "growth": growth(results), "frames": FRAMES, "size": list(SIZE), "method": METHOD,
              "slots": SLOTS, "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
    if args.plot:
        plot(results, args.plot)
    if args.json:
        print(json.dumps(report))
    else:
        print("\n".join(table(results)))
        print(f"growth: {report['growth']}")
        for r in results:
            if "ui" in r:
                print(f"MLflow UI over {r['n']:,} runs: {r['ui']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
