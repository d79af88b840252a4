"""Typed frozen recipes: a frozen dataclass built from a mapping, keys and types checked once.

Every field needs a default (or default factory); its type is the default's type. The
dataclass's own ``__post_init__`` checks ranges; a ConfigError from it is re-raised naming the
section and the file, so every recipe error reads ``FILE: section.key: problem``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, TypeVar

from vilocal_dist.config.keys import check_keys
from vilocal_dist.errors import ConfigError

T = TypeVar("T")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"recipe field {f.name} needs a default")


def coerce(value: Any, default: Any, name: str, source: str | Path | None = None) -> Any:
    """``value`` as the type of ``default`` when that loses nothing (int → float, 2.0 → 2, a list
    → tuple, YAML 1.1's ``"1e-3"`` → float); else a ConfigError naming ``name``."""
    kind = type(default)
    if default is None or isinstance(default, Mapping) and isinstance(value, Mapping):
        return value
    if isinstance(default, tuple):
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if kind in (int, float) and isinstance(value, str):
        try:
            value = kind(float(value)) if kind is float else int(value)
        except ValueError:
            pass
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float and number:
        return float(value)
    if kind is int and number and float(value).is_integer():
        return int(value)
    if type(value) is kind:
        return value
    raise ConfigError(f"{name} must be {kind.__name__}, got {value!r}", source)


def from_mapping(
    cls: type[T], d: Mapping[str, Any] | None, where: str = "", source: str | Path | None = None, what: str = "key"
) -> T:
    """The frozen dataclass ``cls`` from ``d`` (missing keys keep their defaults). Unknown keys
    (with the closest one suggested), wrong types and the class's own range checks are
    ConfigErrors naming ``where`` (the section) and ``source`` (the file or flag)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    d = check_keys(d or {}, list(fields), where, source, what)
    values = {k: coerce(v, _default(fields[k]), f"{where}.{k}" if where else k, source) for k, v in d.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        if exc.path is not None:
            raise
        raise ConfigError(f"{where}: {exc.problem}" if where else exc.problem, source) from None


def check_number(
    value: Any, key: str, source: str | Path | None = None, *, integer: bool = False, minimum: float | None = None
) -> Any:
    """``value`` as an int (``integer``) or float, ≥ ``minimum`` if given; else a ConfigError
    ``key: problem`` naming ``source``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        raise ConfigError(f"{key}: must be {'an integer' if integer else 'a number'}, got {value!r}", source)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{key}: must be ≥ {minimum}, got {value!r}", source)
    return int(value) if integer else float(value)
