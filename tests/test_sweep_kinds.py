"""A sweep kind is one registered object: a new kind is one module (here, one class) plus a test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pytest
import yaml

from vilocal_dist.config import from_mapping
from vilocal_dist.distributed.kinds import SweepKind, get_kind, list_kinds, register_kind, unregister_kind
from vilocal_dist.distributed.spec import load_specs
from vilocal_dist.errors import ConfigError


def test_the_built_in_kinds_are_registered():
    assert list_kinds()[:3] == ["vilocal-contrastive", "vilocal-focal", "inpaint-regularizers"]
    with pytest.raises(ConfigError, match="did you mean 'vilocal-focal'"):
        get_kind("vilocal-focl")


@dataclass(frozen=True)
class QuadraticData:
    points: int = 3


@pytest.fixture
def quadratic_kind():
    """A tiny kind: a trial scores ``-(x - 2)²``; ``data.points`` and ``x ≥ 0`` are its rules."""

    @register_kind
    class Quadratic(SweepKind):
        name = "test-quadratic"
        experiment = "vilocal-sweep-test"
        metric = "score"
        data_keys = ("points",)

        def validator(self, base: Mapping[str, Any], source: Path):
            def check(values: Mapping[str, Any]) -> None:
                if {**base, **values}.get("x", 0) < 0:
                    raise ConfigError("x must be ≥ 0")

            check({})
            return check

        def parse_data(self, data: Mapping[str, Any], source: Path) -> QuadraticData:
            return from_mapping(QuadraticData, data, "data", source)

        def fit(self, spec: Any, path: str, resume: bool, callbacks: list, prepared: Any) -> tuple[Any, bool]:
            xs = [spec.search_space[0].low + i for i in range(spec.data.points)]
            return [{"trial_id": str(i), "x": x, "score": -((x - 2) ** 2)} for i, x in enumerate(xs)], True

        def rows(self, spec: Any, results: Any) -> list[dict[str, Any]]:
            return list(results)

    yield get_kind("test-quadratic")
    unregister_kind("test-quadratic")


def test_a_new_kind_is_one_registered_class(quadratic_kind, tmp_path):
    spec_file = tmp_path / "q.yaml"
    spec_file.write_text(yaml.safe_dump({
        "kind": "test-quadratic", "search_space": {"x": {"type": "uniform", "low": 0, "high": 4}},
        "data": {"points": 4},
    }))  # fmt: skip
    (spec,) = load_specs(spec_file)
    assert spec.kind is quadratic_kind and spec.metric == "score" and spec.experiment == "vilocal-sweep-test"
    assert spec.data == QuadraticData(points=4)
    results, complete = spec.kind.fit(spec, str(tmp_path), False, [], spec.kind.prepare(spec))
    rows = spec.kind.rows(spec, results)
    assert complete and max(rows, key=lambda r: r["score"])["x"] == 2.0
    # Its own rules run while the spec is read, naming the file and the key.
    with pytest.raises(ConfigError, match=r"q\.yaml: search_space\.x: uniform range includes an illegal value -1"):
        load_specs(spec_file, {"search_space.x.low": -1})
    with pytest.raises(ConfigError, match=r"q\.yaml: data\.point: unknown key \(did you mean 'points'\?\)"):
        load_specs(spec_file, {"data.point": 2})


def test_auto_lambda_asks_the_method_registry_up_front():
    from vilocal_dist.distributed.auto_lambda import check_lambda_method

    check_lambda_method("iivi", {"preset": "tiny"})
    with pytest.raises(ConfigError, match="--auto-lambda: method 'telea' has no lambda_a, lambda_s option"):
        check_lambda_method("telea")
    with pytest.raises(ConfigError, match="did you mean 'iivi'"):
        check_lambda_method("iivj")
