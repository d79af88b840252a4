"""Ray Train: both stages on 2 CPU workers, MLflow runs, checkpoints, resume, failures end FAILED."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from vilocal_dist.engines.checkpoint import load_checkpoint
from vilocal_dist.engines.config import TrainConfig

pytestmark = pytest.mark.ray

SIZE = (32, 48)
EXPERIMENT = "test-train"


def _cfg(**changes) -> TrainConfig:
    base = dict(model="vilocal_tiny", size_h=SIZE[0], size_w=SIZE[1], compress_fraction=0.0,
                stage1_epochs=1, stage2_epochs=1)
    return TrainConfig(**{**base, **changes})


def _client():
    import mlflow

    from vilocal_dist.tracking import tracking_uri

    return mlflow.MlflowClient(tracking_uri=tracking_uri())


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow  # about a minute on 2 idle cores: two Ray Train runs, then a resumed one
def test_both_stages_then_resume(ray_local, mlflow_home, forged):
    from vilocal_dist.distributed.train import train

    s1, s2 = train("both", _cfg(), forged, run_name="demo", workers=2, experiment=EXPERIMENT)
    # One train video of 5 frames (the other is held out for validation); DistributedSampler pads
    # the 5 clips to 3 per worker, so an epoch is 6 samples seen.
    per_epoch = 6

    # Checkpoints: one model.pt per stage, stage 2 built on stage 1's (best) encoder.
    c1, c2 = load_checkpoint(s1.checkpoint), load_checkpoint(s2.checkpoint)
    assert (c1["stage"], c1["epoch"], c2["stage"], c2["epoch"]) == (1, 0, 2, 0)
    assert Path(s1.checkpoint).parent == mlflow_home / "ray" / "demo-stage1"
    assert all(torch.equal(v, c2["model_state"][k]) for k, v in c1["model_state"].items() if k.startswith("encoder."))
    assert c2["train_config"]["model"] == "vilocal_tiny"

    client = _client()
    for outcome, metrics in ((s1, ["train/loss", "val/loss"]), (s2, ["train/loss", "val/loss", "val/f1", "val/iou"])):
        run = client.get_run(outcome.mlflow_run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["vilocal.run_name"] == outcome.run_name
        assert run.data.params["workers"] == "2" and run.data.params["stage"] == str(outcome.stage)
        assert run.data.params["tau"] == "0.1" and run.data.params["alpha"] == "0.5"
        for key in metrics:
            history = _history(client, outcome.mlflow_run_id, key)
            assert [step for step, _ in history] == [per_epoch]  # x-axis: samples seen
        artifacts = {a.path for a in client.list_artifacts(outcome.mlflow_run_id)}
        assert {"config.json", "model"} <= artifacts
        assert [a.path for a in client.list_artifacts(outcome.mlflow_run_id, "model")] == ["model/model.pt"]
    assert len(client.list_artifacts(s2.mlflow_run_id, "examples")) >= 1

    # Rerun stage 1 under the same name with one more epoch: it resumes from epoch 0's checkpoint.
    (r1,) = train("1", _cfg(stage1_epochs=2), forged, run_name="demo", workers=2, experiment=EXPERIMENT)
    assert r1.resumed and r1.mlflow_run_id == s1.mlflow_run_id
    assert _history(client, r1.mlflow_run_id, "epoch") == [(per_epoch, 0.0), (2 * per_epoch, 1.0)]
    assert sorted(p.name for p in (mlflow_home / "ray" / "demo-stage1").glob("epoch_*")) == ["epoch_0000", "epoch_0001"]
    val_losses = [v for _, v in _history(client, r1.mlflow_run_id, "val/loss")]
    assert r1.best_metrics["val/loss"] == pytest.approx(min(val_losses))
    assert client.get_run(r1.mlflow_run_id).info.status == "FINISHED"


def test_a_size_the_network_cannot_take_fails_in_the_driver(ray_local, mlflow_home, forged):
    from vilocal_dist.distributed.train import train
    from vilocal_dist.errors import ConfigError

    # 30×46 is not divisible by the encoder's stride 4: rejected before any worker (or retry) starts.
    with pytest.raises(ConfigError, match="divisible by 4"):
        train("1", _cfg(size_h=30, size_w=46), forged, run_name="bad-size", workers=1, experiment=EXPERIMENT)
    assert not (mlflow_home / "ray" / "bad-size-stage1").exists()


def test_a_failing_worker_ends_the_run_failed(ray_local, mlflow_home, forged, tmp_path):
    from vilocal_dist.data.manifest import ForgedDataset
    from vilocal_dist.distributed.train import train

    # A training frame corrupted after forging: the driver's checks pass (it reads the manifest,
    # not every frame), the workers fail on every attempt, the run ends FAILED after its retry.
    data = tmp_path / "forged"
    shutil.copytree(forged, data)
    record = ForgedDataset(data).records(split="train")[0]
    frame = sorted((ForgedDataset(data).video_dir(record["id"]) / "frames").glob("*.png"))[2]
    frame.write_bytes(b"not a png")
    with pytest.raises(Exception, match=frame.name):
        train("1", _cfg(), data, run_name="broken", workers=1, experiment=EXPERIMENT, max_failures=1)
    runs = _client().search_runs([_client().get_experiment_by_name(EXPERIMENT).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def _train_workers() -> list:
    """This session's Ray Train workers (descendants of this process: never another Ray's)."""
    import psutil

    def is_worker(p) -> bool:
        try:
            return "RayTrainWorker" in " ".join(p.cmdline())
        except psutil.Error:
            return False

    return [p for p in psutil.Process().children(recursive=True) if is_worker(p)]


@pytest.mark.slow  # two 8-epoch runs on 2 workers, one of them restarted: a minute or two
def test_a_killed_worker_restarts_from_its_last_checkpoint(ray_local, mlflow_home, forged):
    """SIGKILL one of two Ray Train workers once a checkpoint is saved: FailureConfig
    restarts the worker group from that checkpoint and the run ends as an uninterrupted one does."""
    from vilocal_dist.distributed.train import RESUMED_TAG, train

    cfg = _cfg(stage1_epochs=8)
    (reference,) = train("1", cfg, forged, run_name="reference", workers=2, experiment=EXPERIMENT, max_failures=0)

    killed: list[int] = []

    def kill_a_worker_after_the_first_checkpoint() -> None:
        # Wait until Ray's controller has registered a checkpoint (its snapshot names one): a
        # folder exists seconds before the controller polls its report, and a kill in between
        # restarts from scratch, which proves less.
        snapshot = mlflow_home / "ray" / "killed-stage1" / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        workers = _train_workers()
        if workers:
            workers[-1].send_signal(signal.SIGKILL)
            killed.append(workers[-1].pid)

    watcher = threading.Thread(target=kill_a_worker_after_the_first_checkpoint, daemon=True)
    watcher.start()
    (outcome,) = train("1", cfg, forged, run_name="killed", workers=2, experiment=EXPERIMENT, max_failures=2)
    watcher.join(timeout=5)

    assert killed, "no Ray Train worker process found to kill"
    run = _client().get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[RESUMED_TAG].startswith("epoch ")  # the restarted group resumed from a checkpoint
    resumed_epoch = int(run.data.tags[RESUMED_TAG].split()[1])
    assert 0 <= resumed_epoch < 7
    assert sorted(p.name for p in (mlflow_home / "ray" / "killed-stage1").glob("epoch_*"))[-1] == "epoch_0007"
    # Same data order and seeds after the restart: the final epoch's metrics match the reference.
    ref, got = _read_final(reference), _read_final(outcome)
    assert got["epoch"] == ref["epoch"] == 7 and got["samples_seen"] == ref["samples_seen"]
    for key in ("train/loss", "val/loss"):
        assert got["metrics"][key] == pytest.approx(ref["metrics"][key], rel=1e-4), key


def _read_final(outcome) -> dict:
    folder = sorted(Path(outcome.ray_checkpoint.path).parent.glob("epoch_*"))[-1]
    return load_checkpoint(folder)
