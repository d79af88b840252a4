"""Sweep specs: the shipped files load; bad specs fail before anything starts, naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vilocal_dist.distributed.spec import apply_overrides, load_specs
from vilocal_dist.errors import ConfigError
from vilocal_dist.paths import REPO_ROOT

SWEEPS = REPO_ROOT / "sweeps"

GOOD = {
    "kind": "vilocal-contrastive",
    "metric": "val/f1",
    "mode": "max",
    "num_samples": 4,
    "search_space": {"tau": {"type": "loguniform", "low": 0.05, "high": 0.5}},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": 3},
    "data": {"root": "forged"},
    "base": {"model": "vilocal_tiny", "stage2_epochs": 3},
}
INPAINT = {
    "kind": "inpaint-regularizers",
    "search_space": {"lambda_a": {"type": "loguniform", "low": 0.01, "high": 1.0}},
    "data": {"composed": 2},
    "base": {"preset": "tiny"},
}


def write(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def with_(spec: dict, changes: dict) -> dict:
    return {**spec, **changes}


@pytest.mark.parametrize("name", ["demo", "vilocal-contrastive", "vilocal-focal", "inpaint-regularizers"])
def test_shipped_specs_are_valid(name):
    specs = load_specs(SWEEPS / f"{name}.yaml")
    assert specs and all(s.search_space for s in specs)
    for spec in specs:
        assert spec.mode in ("max", "min") and spec.num_samples >= 1 and spec.name


def test_shipped_spec_contents():
    (tau,) = load_specs(SWEEPS / "vilocal-contrastive.yaml")
    assert (tau.metric, tau.mode, tau.param_names, tau.scheduler.type) == ("val/f1", "max", ["tau"], "asha")
    (focal,) = load_specs(SWEEPS / "vilocal-focal.yaml")
    assert focal.param_names == ["alpha", "gamma"]
    (lam,) = load_specs(SWEEPS / "inpaint-regularizers.yaml")
    assert (lam.metric, lam.param_names) == ("selfval/psnr", ["lambda_a", "lambda_s"])
    demo = load_specs(SWEEPS / "demo.yaml")
    assert [s.kind.name for s in demo] == ["inpaint-regularizers", "vilocal-contrastive"]


BAD = [
    # (change to GOOD, key named in the error, words in the error)
    ({"tau_space": 1}, "tau_space", "unknown key"),
    ({"kind": "vilocal-contrast"}, "kind", "must be one of"),
    ({"mode": "maximum"}, "mode", "max or min"),
    ({"num_samples": 0}, "num_samples", "≥ 1"),
    ({"search_space": {"tau": {"type": "uniform", "low": 0.0, "high": 0.5}}}, "search_space.tau", "tau must be > 0"),
    ({"search_space": {"tau": {"type": "uniform", "low": -0.1, "high": 0.5}}}, "search_space.tau", "illegal value -0.1"),
    ({"search_space": {"tau": {"type": "choice", "values": [0.1, 0.0]}}}, "search_space.tau", "tau must be > 0"),
    ({"search_space": {"alpha": {"type": "uniform", "low": 0.2, "high": 1.5}}}, "search_space.alpha", "alpha must be in [0, 1]"),
    ({"search_space": {"gamma": {"type": "uniform", "low": -1, "high": 2}}}, "search_space.gamma", "gamma must be >= 0"),
    ({"search_space": {"tau": {"type": "normal", "low": 0.1, "high": 0.5}}}, "search_space.tau.type", "unknown distribution"),
    ({"search_space": {"tau": {"type": "loguniform", "low": 0.0, "high": 0.5}}}, "search_space.tau.low", "low > 0"),
    ({"search_space": {"tau": {"type": "uniform", "low": 0.5, "high": 0.1}}}, "search_space.tau", "low must be < high"),
    ({"search_space": {"tau": {"type": "uniform", "low": 0.1}}}, "search_space.tau", "missing high"),
    ({"search_space": {"tau": {"type": "choice", "values": []}}}, "search_space.tau.values", "non-empty"),
    ({"search_space": {"tau": {"type": "quniform", "low": 0.1, "high": 0.5, "q": 0}}}, "search_space.tau.q", "> 0"),
    ({"search_space": {"tau": {"type": "uniform", "low": 0.1, "high": 0.5, "step": 1}}}, "search_space.tau.step", "unknown key"),
    ({"search_space": {"temperature": {"type": "uniform", "low": 0.1, "high": 0.5}}}, "search_space.temperature", "unknown training config key"),
    ({"search_space": {}}, "search_space", "at least one"),
    ({"scheduler": {"type": "asha", "grace_period": 4, "max_t": 2}}, "scheduler.max_t", "grace_period"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type", "asha"),
    ({"scheduler": {"type": "asha", "reduction_factor": 1}}, "scheduler.reduction_factor", "> 1"),
    ({"resources": {"gpus_per_trial": 1}}, "resources.gpus_per_trial", "training sweeps size by workers_per_trial"),
    ({"resources": {"workers_per_trial": 0}}, "resources.workers_per_trial", "≥ 1"),
    ({"resources": {"workers": 2}}, "resources.workers", "workers_per_trial"),
    ({"data": {}}, "data.root", "forged dataset"),
    ({"data": {"root": "f", "forge": {"size": "64by96"}}}, "data.forge.size", "HxW"),
    ({"data": {"root": "f", "forge": {"composed": 0}}}, "data.forge.composed", "≥ 1"),
    ({"base": {"stage1_epoch": 2}}, "base", "did you mean 'stage1_epochs'"),
    ({"base": {"tau": -1.0}}, "base", "tau must be > 0"),
    ({"name": "a/b"}, "name", "plain folder name"),
]


@pytest.mark.parametrize(("change", "key", "words"), BAD, ids=[b[1] + ":" + b[2][:12] for b in BAD])
def test_bad_spec_is_rejected_naming_file_and_key(tmp_path, change, key, words):
    path = write(tmp_path, with_(GOOD, change))
    with pytest.raises(ConfigError) as err:
        load_specs(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}"), message
    assert words in message


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"search_space": {"lambda_a": {"type": "uniform", "low": -0.5, "high": 1.0}}}, "search_space.lambda_a", "lambda_a, lambda_s must be ≥ 0"),
        ({"scheduler": {"type": "asha", "max_t": 3}}, "scheduler", "report once"),
        ({"resources": {"gpus_per_trial": -0.5}}, "resources.gpus_per_trial", "≥ 0"),
        ({"data": {}}, "data", "composed"),
        ({"base": {"method": "telea"}}, "search_space.lambda_a", "telea: unknown option(s) ['lambda_a']"),  # asks the method registry
        ({"search_space": {"method": {"type": "choice", "values": ["iivi"]}}}, "search_space.method", "fixed per sweep"),
    ],
)
def test_bad_inpaint_spec(tmp_path, change, key, words):
    path = write(tmp_path, with_(INPAINT, change))
    with pytest.raises(ConfigError) as err:
        load_specs(path)
    assert str(err.value).startswith(f"{path}: {key}") and words in str(err.value), str(err.value)


def test_focal_cannot_search_stage1_keys(tmp_path):
    spec = with_(GOOD, {"kind": "vilocal-focal", "search_space": {"tau": {"type": "uniform", "low": 0.1, "high": 0.2}}})
    with pytest.raises(ConfigError, match="search_space.tau: vilocal-focal reuses one trained encoder"):
        load_specs(write(tmp_path, spec))


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_specs(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_specs(bad)


def test_overrides_apply_to_all_or_one_sub_sweep(tmp_path):
    multi = {"sweeps": {"tau": GOOD, "lam": INPAINT}}
    path = write(tmp_path, multi)
    specs = load_specs(path, {"num_samples": 2, "tau.scheduler": "none", "tau.search_space.tau.high": 0.3})
    tau, lam = specs
    assert (tau.num_samples, lam.num_samples) == (2, 2)
    assert tau.scheduler.type == "none" and tau.search_space[0].high == 0.3
    assert (tau.name, lam.name) == ("spec-tau", "spec-lam")
    # An unscoped key that only one sub-sweep accepts: fine once --only picks that one.
    with pytest.raises(ConfigError, match="data.composed: unknown key"):
        load_specs(path, {"data.composed": 1})
    (only,) = load_specs(path, {"data.composed": 1}, only=["lam"])
    assert only.data.composed == 1
    with pytest.raises(ConfigError, match="no sub-sweep named"):
        load_specs(path, only=["nope"])
    raw = {"a": {"b": 1}}
    assert apply_overrides(raw, {"a.c": 2}, path) == {"a": {"b": 1, "c": 2}} and raw == {"a": {"b": 1}}
