"""The bottom-layer config package: loader, --set, key checker, size parser, frozen recipes."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from vilocal_dist.config import (
    apply_sets,
    check_keys,
    check_number,
    deep_merge,
    from_mapping,
    load_yaml,
    parse_sets,
    parse_size,
    size_arg,
)
from vilocal_dist.errors import ConfigError


def test_load_yaml_reads_a_mapping_and_names_the_file_on_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("a: 1\nb: {c: [1, 2]}\n")
    assert load_yaml(good) == {"a": 1, "b": {"c": [1, 2]}}
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML") as err:
        load_yaml(bad)
    assert "\n" not in str(err.value)  # one line
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: a sweep spec must be a mapping"):
        load_yaml(listing, "sweep spec")
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read config"):
        load_yaml(tmp_path / "missing.yaml")
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):  # safe_load refuses Python tags
        load_yaml(unsafe)


def test_set_values_are_yaml_scalars_and_lists():
    sets = parse_sets(["tau=0.2", "lr=1e-3", "n=3", "name=tiny", "flag=true", "crfs=[18, 23]", "empty=", "a.b.c=1"])
    assert sets == {"tau": 0.2, "lr": 1e-3, "n": 3, "name": "tiny", "flag": True, "crfs": [18, 23], "empty": "",
                    "a.b.c": 1}  # fmt: skip
    assert isinstance(sets["lr"], float)
    for bad in ["tau", "=1", "a..b=1", ".a=1"]:
        with pytest.raises(ConfigError, match="--set expects key=value"):
            parse_sets([bad])
    with pytest.raises(ConfigError, match="cannot parse value"):
        parse_sets(["tau=[1"])


def test_dotted_set_reaches_nested_keys_without_touching_the_original():
    tree = {"train": {"alpha": 0.5}, "crfs": [1], "scheduler": "none"}
    out = apply_sets(tree, parse_sets(["train.alpha=0.75", "a.b.c=1", "scheduler.type=asha"]))
    assert out == {"train": {"alpha": 0.75}, "crfs": [1], "a": {"b": {"c": 1}}, "scheduler": {"type": "asha"}}
    assert tree["train"]["alpha"] == 0.5
    with pytest.raises(ConfigError, match="'crfs' is not a section"):
        apply_sets(tree, {"crfs.x": 1})


def test_unknown_keys_suggest_the_closest_one():
    with pytest.raises(ConfigError) as err:
        check_keys({"stage1_epoch": 2}, ["stage1_epochs", "stage2_epochs", "tau"], "train", "exp.yaml")
    assert str(err.value) == ("exp.yaml: train.stage1_epoch: unknown key (did you mean 'stage1_epochs'?); "
                              "known: stage1_epochs, stage2_epochs, tau")  # fmt: skip
    with pytest.raises(ConfigError, match="zzz: unknown key; known"):  # nothing close: no suggestion
        check_keys({"zzz": 1}, ["alpha", "gamma"])
    with pytest.raises(ConfigError, match="train must be a mapping"):
        check_keys([1], ["a"], "train")


def test_a_set_with_a_typo_is_rejected_where_it_becomes_a_recipe():
    from vilocal_dist.engines.config import TrainConfig, load_config

    with pytest.raises(ConfigError, match="stage1_epoch: unknown training config key \\(did you mean 'stage1_epochs'\\?\\)"):
        load_config(None, parse_sets(["stage1_epoch=2"]))
    assert load_config(None, parse_sets(["stage1_epochs=2", "alpha=1"])) == TrainConfig(stage1_epochs=2, alpha=1.0)


def test_size_parser():
    assert parse_size("240x432") == (240, 432)
    assert parse_size("64X112") == (64, 112)
    assert parse_size([32, 48]) == (32, 48)
    assert parse_size("8x8", minimum=1) == (8, 8)
    with pytest.raises(ConfigError, match="data.size must look like HxW"):
        parse_size("big", where="data.size", source="s.yaml")
    with pytest.raises(ConfigError, match="at least 16x16, got '8x8'"):
        parse_size("8x8")
    with pytest.raises(ConfigError, match="HxW"):
        parse_size("1x2x3")
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=size_arg())
    assert parser.parse_args(["--size", "32x48"]).size == (32, 48)
    with pytest.raises(SystemExit):
        parser.parse_args(["--size", "4x4"])


@dataclass(frozen=True)
class Recipe:
    name: str = "x"
    epochs: int = 1
    lr: float = 1e-3
    methods: tuple[str, ...] = ("telea",)
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")


def test_frozen_recipes_are_checked_once_when_built():
    r = from_mapping(Recipe, {"epochs": 3.0, "lr": 1, "methods": ["a", "b"], "extra": {"k": 1}}, "train", "r.yaml")
    assert r == Recipe(epochs=3, lr=1.0, methods=("a", "b"), extra={"k": 1})
    assert isinstance(r.epochs, int) and isinstance(r.lr, float)
    assert from_mapping(Recipe, {"lr": "1e-4"}).lr == 1e-4  # YAML 1.1 reads 1e-4 as a string
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.epochs = 4  # type: ignore[misc]
    with pytest.raises(ConfigError, match=r"^r\.yaml: train\.epoch: unknown key \(did you mean 'epochs'\?\)"):
        from_mapping(Recipe, {"epoch": 2}, "train", "r.yaml")
    with pytest.raises(ConfigError, match=r"^r\.yaml: train\.epochs must be int, got 1\.5"):
        from_mapping(Recipe, {"epochs": 1.5}, "train", "r.yaml")
    with pytest.raises(ConfigError, match=r"^r\.yaml: train\.name must be str, got 3"):
        from_mapping(Recipe, {"name": 3}, "train", "r.yaml")
    with pytest.raises(ConfigError, match=r"^r\.yaml: train: epochs must be >= 1, got 0"):  # the class's own check
        from_mapping(Recipe, {"epochs": 0}, "train", "r.yaml")


def test_number_checks_and_merge():
    assert check_number(3.0, "n", integer=True, minimum=1) == 3
    with pytest.raises(ConfigError, match="n: must be an integer, got 2.5"):
        check_number(2.5, "n", integer=True)
    with pytest.raises(ConfigError, match="n: must be a number, got True"):
        check_number(True, "n")
    with pytest.raises(ConfigError, match="n: must be ≥ 1, got 0"):
        check_number(0, "n", minimum=1)
    assert deep_merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"c": 3}, "l": [2]}) == {"a": {"b": 1, "c": 3}, "l": [2]}


def test_the_config_package_sits_at_the_bottom():
    """It imports nothing from the rest of the package except ``errors``."""
    import ast
    from pathlib import Path

    import vilocal_dist.config as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vilocal_dist"):
                assert node.module.startswith(("vilocal_dist.config", "vilocal_dist.errors")), (path, node.module)
