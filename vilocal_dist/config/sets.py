"""The one ``--set key=value`` syntax, shared by every command that has the flag.

``--set a.b.c=1`` sets key ``c`` of section ``b`` of section ``a`` (created when absent); the value
is read as a YAML scalar or list (``1`` → int, ``1e-3`` → float, ``[1, 2]`` → list, ``tiny`` →
str). Keys are checked where the result becomes a recipe (:func:`~vilocal_dist.config.from_mapping`),
so an unknown key gets the closest-key suggestion of the recipe it was meant for.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from vilocal_dist.errors import ConfigError

#: YAML 1.1 reads ``1e-3`` (no dot) as a string; on the command line it is always meant as a number.
_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _value(raw: str) -> Any:
    if not raw.strip():
        return ""
    value = yaml.safe_load(raw)
    return float(value) if isinstance(value, str) and _EXPONENT.fullmatch(value) else value


def parse_sets(items: Iterable[str], flag: str = "--set") -> dict[str, Any]:
    """``["tau=0.2", "train.stage1_epochs=2"]`` → ``{"tau": 0.2, "train.stage1_epochs": 2}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{flag} expects key=value, got {item!r}")
        try:
            out[key] = _value(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{flag} {item!r}: cannot parse value ({' '.join(str(exc).split())})") from None
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str | Path | None = None) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted`` ``"a.b.c"``, creating missing (or ``none``) sections."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None or child == "none":
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {key!r} is not a section (it holds {child!r})", source)
        node = child
    node[keys[-1]] = value


def apply_sets(tree: Mapping[str, Any], sets: Mapping[str, Any], source: str | Path | None = None) -> dict[str, Any]:
    """A copy of ``tree`` with every dotted ``--set`` of ``sets`` applied (``tree`` is untouched)."""
    out = copy.deepcopy(dict(tree))
    for dotted, value in sets.items():
        set_dotted(out, dotted, value, source)
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
