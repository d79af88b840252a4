"""Lineage in a real SQLite store: a forged dataset is an MLflow dataset (digest = the manifest's
sha256), the output of the run that made it and the input of the runs that train or evaluate on
it, and the two sides link to each other."""

from __future__ import annotations

import json

import pytest

from vilocal_dist.engines.config import TrainConfig
from vilocal_dist.tracking.lineage import (
    CONSUMERS_TAG,
    FORGE_RUN_TAG,
    dataset_uri,
    log_dataset_input,
    log_dataset_output,
    manifest_sha256,
)

SIZE = (32, 48)


def _client():
    import mlflow

    from vilocal_dist.tracking import tracking_uri

    return mlflow.MlflowClient(tracking_uri=tracking_uri())


def _inputs(run) -> list[tuple[str, str, list[str]]]:
    return [(d.dataset.digest, d.dataset.source, [t.value for t in d.tags]) for d in run.inputs.dataset_inputs]


def test_producer_and_consumers_link_both_ways(mlflow_home, forged):
    from vilocal_dist.tracking.setup import ensure_experiment

    client = _client()
    digest = manifest_sha256(forged)[:32]
    forge_run = client.create_run(ensure_experiment("vilocal-forge")).info.run_id
    assert log_dataset_output(forge_run, forged) == digest
    train_run = client.create_run(ensure_experiment("vilocal-train")).info.run_id
    eval_run = client.create_run(ensure_experiment("vilocal-evaluate")).info.run_id
    assert log_dataset_input(train_run, forged, "training") == digest
    assert log_dataset_input(eval_run, forged, "evaluation") == digest

    (out,) = _inputs(client.get_run(forge_run))
    assert out[0] == digest and out[2] == ["forge-output"] and dataset_uri(forged) in out[1]
    assert _inputs(client.get_run(train_run))[0][::2] == (digest, ["training"])
    assert _inputs(client.get_run(eval_run))[0][::2] == (digest, ["evaluation"])
    for run_id in (train_run, eval_run):
        assert client.get_run(run_id).data.tags[FORGE_RUN_TAG] == forge_run
    assert client.get_run(forge_run).data.tags[CONSUMERS_TAG] == f"{train_run},{eval_run}"
    profile = json.loads(client.get_run(forge_run).inputs.dataset_inputs[0].dataset.profile)
    assert profile["manifest_sha256"] == manifest_sha256(forged)
    assert profile["videos"] == 3 and profile["by_split"] == {"train": 2, "test": 1}

    # Logging the same consumer again does not list it twice.
    log_dataset_input(train_run, forged, "training")
    assert client.get_run(forge_run).data.tags[CONSUMERS_TAG] == f"{eval_run},{train_run}"


def test_data_without_a_producing_run_is_still_an_input(mlflow_home, forged):
    from vilocal_dist.tracking.setup import ensure_experiment

    client = _client()
    run_id = client.create_run(ensure_experiment("vilocal-train")).info.run_id
    log_dataset_input(run_id, forged, "training")
    run = client.get_run(run_id)
    assert _inputs(run)[0][0] == manifest_sha256(forged)[:32] and FORGE_RUN_TAG not in run.data.tags


@pytest.mark.ray
@pytest.mark.slow  # one Ray Train run of one epoch
def test_the_train_run_names_the_dataset_digest(ray_local, mlflow_home, forged):
    from vilocal_dist.distributed.train import train_stage

    client = _client()
    from vilocal_dist.tracking.setup import ensure_experiment

    forge_run = client.create_run(ensure_experiment("vilocal-forge")).info.run_id
    log_dataset_output(forge_run, forged)
    cfg = TrainConfig(model="vilocal_tiny", size_h=SIZE[0], size_w=SIZE[1], compress_fraction=0.0, stage1_epochs=1)
    outcome = train_stage(1, cfg, forged, run_name="lineage", workers=1)
    run = client.get_run(outcome.mlflow_run_id)
    assert _inputs(run)[0][::2] == (manifest_sha256(forged)[:32], ["training"])
    assert run.data.params["data.manifest_sha256"] == manifest_sha256(forged)
    assert run.data.tags[FORGE_RUN_TAG] == forge_run
    assert client.get_run(forge_run).data.tags[CONSUMERS_TAG] == outcome.mlflow_run_id
