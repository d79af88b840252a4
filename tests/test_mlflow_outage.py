"""The MLflow tracking server going away: training and sweeps carry on, records are spooled and
replayed once, in order, when the server is back (a real `mlflow server`, killed and restarted)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from vilocal_dist.tracking.local_server import LocalServer

SIZE = (32, 48)


class Server(LocalServer):
    """A real `mlflow server`; ``kill()`` and ``start()`` keep its store (a test failure when it will not start)."""

    def start(self) -> None:
        try:
            super().start()
        except RuntimeError as exc:
            pytest.fail(str(exc))

    def kill(self) -> None:
        """SIGKILL the server and its workers: it goes away mid-whatever, as a crashed node would."""
        self.stop()

    def epochs_logged(self, run_name: str) -> int:
        """How many `epoch` values the server has stored for the run tagged ``run_name``."""
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
                return db.execute(
                    "SELECT COUNT(*) FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
                    "WHERE m.key = 'epoch' AND t.key = 'vilocal.run_name' AND t.value = ?", (run_name,)
                ).fetchone()[0]
        except sqlite3.Error:  # not created yet, or busy
            return 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture()
def home(server, tmp_path, monkeypatch):
    """Runs under tmp_path, tracked on the test server (which is up when a test starts)."""
    if server.proc is None:
        server.start()
    monkeypatch.setenv("VILOCAL_HOME", str(tmp_path / "runs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.delenv("VILOCAL_STORAGE", raising=False)
    monkeypatch.delenv("VILOCAL_MLFLOW_RETRY_S", raising=False)
    return tmp_path / "runs"


def _client(server):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=server.uri)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _new_run(server, experiment: str) -> str:
    from vilocal_dist.tracking.setup import ensure_experiment

    return _client(server).create_run(ensure_experiment(experiment, server.uri)).info.run_id


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# ----------------------------------------------------------------------------- the spool, no Ray


def test_metrics_logged_while_the_server_is_down_arrive_once_in_order(server, home, tmp_path, caplog):
    from vilocal_dist.tracking.spool import DeliveryConfig, RunLog, read_spool

    caplog.set_level(logging.WARNING, logger="vilocal_dist")
    run_id = _new_run(server, "outage-unit")
    spool = tmp_path / "mlflow-spool" / f"{run_id}.jsonl"
    runlog = RunLog(run_id, server.uri, spool, config=DeliveryConfig(probe_every_s=0))  # try on every call

    def metrics(step: int) -> dict[str, float]:
        return {"loss": 1.0 / (step + 1), "acc": step / 10}

    sent = [runlog.log_metrics(metrics(s), step=s) for s in range(3)]
    server.kill()
    sent += [runlog.log_metrics(metrics(s), step=s) for s in range(3, 7)]  # the "training loop" goes on
    assert sent == [True] * 3 + [False] * 4
    assert [r["metrics"][0][3] for r in read_spool(spool)] == [3, 4, 5, 6]  # spooled in order, steps kept
    outage = _warnings(caplog, "is not answering")
    assert len(outage) == 1  # one warning for the whole outage, not one per batch
    assert server.uri in outage[0] and str(spool) in outage[0] and "Training continues" in outage[0]
    spooled = spool.read_text()

    server.start()  # the same database: the run is still there
    assert runlog.log_metrics(metrics(7), step=7)  # replays the 4 spooled batches first, then sends
    assert any("MLflow server back: 4 batches replayed" in m for m in _warnings(caplog, "back"))
    assert not spool.exists()
    assert all(runlog.log_metrics(metrics(s), step=s) for s in (8, 9))

    client = _client(server)
    assert _history(client, run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(10)]
    assert _history(client, run_id, "acc") == [(s, s / 10) for s in range(10)]

    # A crash between delivery and removing the spool replays it again: nothing is stored twice.
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_text(spooled)
    assert runlog.flush()
    assert len(client.get_metric_history(run_id, "loss")) == 10


def test_final_records_wait_in_the_spool_until_sync_delivers_them(server, home, tmp_path, capsys):
    from vilocal_dist.cli.main import main
    from vilocal_dist.tracking.spool import RunLog
    from vilocal_dist.tracking.sync import describe

    run_id = _new_run(server, "outage-final")
    spool = tmp_path / "ray" / "run" / "mlflow-spool" / f"{run_id}.jsonl"
    runlog = RunLog(run_id, server.uri, spool)
    assert runlog.log_metrics({"val/loss": 0.25}, step=6)
    server.kill()
    model = tmp_path / "staging"
    (model / "model").mkdir(parents=True)
    (model / "model" / "model.pt").write_bytes(b"weights")
    assert not runlog.log_artifacts(model)
    (model / "model" / "model.pt").unlink()  # the caller's temporary folder is gone: the spool has a copy
    assert not runlog.set_tags({"vilocal.best_checkpoint": "/ckpt/epoch_0005"})
    assert not runlog.set_status("FINISHED")
    assert not runlog.flush(within_s=1)

    gap = describe(runlog.pending())
    assert "artifacts model/model.pt" in gap and "tags vilocal.best_checkpoint" in gap and "status FINISHED" in gap

    server.start()
    assert main(["tracking", "sync", str(tmp_path / "ray")]) == 0
    assert "all 3 records delivered" in capsys.readouterr().out
    client = _client(server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["vilocal.best_checkpoint"] == "/ckpt/epoch_0005"
    fetched = client.download_artifacts(run_id, "model/model.pt", str(tmp_path / "fetched"))
    assert Path(fetched).read_bytes() == b"weights"
    assert not spool.parent.exists()  # spool, staged copy and folder are gone
    assert main(["tracking", "sync", str(tmp_path / "ray")]) == 0
    assert "nothing to deliver" in capsys.readouterr().out


def test_a_request_the_server_refuses_is_raised_not_spooled(server, home, tmp_path):
    from mlflow.exceptions import MlflowException

    from vilocal_dist.tracking.spool import RunLog

    spool = tmp_path / "mlflow-spool" / "missing.jsonl"
    runlog = RunLog("0" * 32, server.uri, spool)  # no such run: a 404, not an outage
    with pytest.raises(MlflowException):
        runlog.log_metrics({"loss": 1.0}, step=0)
    assert not spool.exists()


def test_a_sweep_callback_keeps_going_through_an_outage(server, home, caplog):
    from vilocal_dist.distributed.tune_mlflow import MLflowTrialLogger
    from vilocal_dist.tracking.spool import DeliveryConfig

    caplog.set_level(logging.WARNING, logger="vilocal_dist")
    parent = _new_run(server, "outage-sweep")
    cb = MLflowTrialLogger(experiment="outage-sweep", parent_run_id=parent, delivery=DeliveryConfig(probe_every_s=0))
    one = SimpleNamespace(trial_id="t1", config={"x": 2.0}, status="RUNNING", last_result=None, error_file=None,
                          num_failures=0)  # fmt: skip
    two = SimpleNamespace(**{**vars(one), "trial_id": "t2", "config": {"x": 3.0}})

    def result(trial, i: int) -> None:
        trial.last_result = {"score": trial.config["x"] * i, "training_iteration": i}
        cb.on_trial_result(i, [], trial, dict(trial.last_result))

    cb.on_trial_start(0, [], one)
    result(one, 1)
    server.kill()
    result(one, 2)
    result(one, 3)
    cb.on_trial_start(0, [], two)  # cannot create its run now: no exception, the sweep goes on
    assert "t2" not in cb.runs
    assert len(_warnings(caplog, server.uri)) == 1  # one warning for the outage, whoever hit it

    server.start()
    result(one, 4)  # replays 2 and 3 first
    result(two, 1)  # its run is created at its next event
    for trial in (one, two):
        trial.status = "TERMINATED"
        cb.on_trial_complete(5, [], trial)

    client = _client(server)
    assert _history(client, cb.runs["t1"], "score") == [(1, 2.0), (2, 4.0), (3, 6.0), (4, 8.0)]
    assert _history(client, cb.runs["t2"], "score") == [(1, 3.0)]
    for trial_id in ("t1", "t2"):
        run = client.get_run(cb.runs[trial_id])
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
    assert not cb.spool_dir.exists()


# ----------------------------------------------------------------------------- Ray Train end to end


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    from vilocal_dist.data.composed import compose_video
    from vilocal_dist.engines.forge import forge_local

    root = tmp_path_factory.mktemp("forged")
    videos = [compose_video(seed, 5, SIZE) for seed in range(2)]
    forge_local(root, videos, ["telea"], splits={v.name: "train" for v in videos}, progress=False)
    return root


def _cfg(epochs: int):
    from vilocal_dist.engines.config import TrainConfig

    return TrainConfig(model="vilocal_tiny", size_h=SIZE[0], size_w=SIZE[1], compress_fraction=0.0,
                       stage1_epochs=epochs, stage2_epochs=1)


class Outage(threading.Thread):
    """Kills the server once the first epoch's metrics are stored; with ``restart``, brings it back
    as soon as something has been spooled (the run is then resilient, not just lucky)."""

    def __init__(self, server: Server, run_name: str, storage: Path, restart: bool) -> None:
        super().__init__(daemon=True)
        self.server, self.run_name, self.storage, self.restart = server, run_name, storage, restart
        self.killed = self.saw_spool = False

    def run(self) -> None:
        deadline = time.monotonic() + 900
        while self.server.epochs_logged(self.run_name) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.server.kill()
        self.killed = True
        if not self.restart:
            return
        spool = self.storage / self.run_name / "mlflow-spool"
        while not any(spool.glob("*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.saw_spool = True
        self.server.start()


def _check_epochs(client, run_id: str, storage: Path, run_name: str, epochs: int) -> None:
    """Every epoch's metrics exactly once, matching the last checkpoint Ray kept."""
    from vilocal_dist.engines.checkpoint import load_checkpoint

    epoch = _history(client, run_id, "epoch")
    assert [v for _, v in epoch] == [float(e) for e in range(epochs)]
    per_epoch = epoch[0][0]
    assert [s for s, _ in epoch] == [per_epoch * (e + 1) for e in range(epochs)]  # samples seen, no gaps
    for key in ("train/loss", "val/loss", "samples_seen"):
        assert [s for s, _ in _history(client, run_id, key)] == [s for s, _ in epoch], key
    last = load_checkpoint(storage / run_name / f"epoch_{epochs - 1:04d}")
    assert _history(client, run_id, "val/loss")[-1][1] == pytest.approx(last["metrics"]["val/loss"])


@pytest.mark.slow  # a 6-epoch Ray Train run plus a server restart (a minute or two on 2 cores)
@pytest.mark.ray
def test_training_survives_the_server_restarting_mid_run(ray_local, server, home, forged):
    from vilocal_dist.distributed.train import train

    run_name = "blip-stage1"
    watcher = Outage(server, run_name, home / "ray", restart=True)
    watcher.start()
    # Wait as long as the server takes to come back (it is restarted as soon as a record is spooled).
    (outcome,) = train("1", _cfg(6), forged, run_name="blip", workers=1, experiment="outage-e2e",
                       tracking_retry_s=900)
    watcher.join(timeout=900)

    assert watcher.killed and watcher.saw_spool
    assert outcome.mlflow_spool == ""
    client = _client(server)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["vilocal.best_checkpoint"] == outcome.checkpoint
    _check_epochs(client, outcome.mlflow_run_id, home / "ray", run_name, 6)
    assert [a.path for a in client.list_artifacts(outcome.mlflow_run_id, "model")] == ["model/model.pt"]
    assert not (home / "ray" / run_name / "mlflow-spool").exists()


@pytest.mark.slow  # a 6-epoch Ray Train run, then a rerun (nothing left to train) once the server is back
@pytest.mark.ray
def test_training_ends_with_the_server_down_and_a_rerun_delivers_later(ray_local, server, home, forged, caplog):
    from vilocal_dist.distributed.train import train

    caplog.set_level(logging.WARNING, logger="vilocal_dist")
    run_name = "away-stage1"
    watcher = Outage(server, run_name, home / "ray", restart=False)
    watcher.start()
    (outcome,) = train("1", _cfg(6), forged, run_name="away", workers=1, experiment="outage-e2e",
                       tracking_retry_s=1)
    watcher.join(timeout=60)

    # Training returned its result; the checkpoints are in Ray storage; the gap is reported.
    assert watcher.killed
    folder = home / "ray" / run_name
    assert (Path(outcome.checkpoint) / "model.pt").is_file()
    assert (folder / "epoch_0005" / "model.pt").is_file()  # the latest is always kept
    spool = Path(outcome.mlflow_spool)
    assert spool == folder / "mlflow-spool" / f"{outcome.mlflow_run_id}.jsonl" and spool.is_file()
    (message,) = _warnings(caplog, "did not take the last records")
    for part in (run_name, outcome.mlflow_run_id, str(spool), outcome.checkpoint, "vilocal tracking sync",
                 "Training itself succeeded", "end status FINISHED", "val/loss"):
        assert part in message, part
    assert spool.with_suffix(".gap.txt").read_text().strip() == message
    records = [json.loads(line) for line in spool.read_text().splitlines()]
    assert records[-1]["op"] == "status" and records[-1]["status"] == "FINISHED"
    assert server.proc is None  # nobody restarted it: the records above had nowhere to go

    # Back up: rerunning under the same name replays the spool before anything else.
    server.start()
    client = _client(server)
    assert client.get_run(outcome.mlflow_run_id).info.status == "RUNNING"  # what the server knew so far
    (again,) = train("1", _cfg(6), forged, run_name="away", workers=1, experiment="outage-e2e")
    assert again.resumed and again.mlflow_run_id == outcome.mlflow_run_id and again.mlflow_spool == ""
    assert any("MLflow server back" in m for m in _warnings(caplog, "batches replayed"))
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    _check_epochs(client, outcome.mlflow_run_id, home / "ray", run_name, 6)
    assert [a.path for a in client.list_artifacts(outcome.mlflow_run_id, "model")] == ["model/model.pt"]
    assert not spool.exists()
