"""A tiny model registry: ``create_model(name, **overrides)`` and ``list_models()``.

Names map to `ViLocalConfig` presets; overrides replace config fields, e.g.
``create_model("vilocal", use_hp3d=False, checkpoint_all=True)``.
"""

from __future__ import annotations

import difflib
from typing import Any

from vilocal_dist.errors import ConfigError
from vilocal_dist.models.vilocal import PRESETS, ViLocal, ViLocalConfig


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(PRESETS)


def get_config(name: str, **overrides: Any) -> ViLocalConfig:
    """The preset ``name`` with ``overrides`` applied; unknown names/fields raise ConfigError."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list_models(), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (known: {', '.join(list_models())})")
    return PRESETS[name].replace(**overrides)


def create_model(name: str, **overrides: Any) -> ViLocal:
    """A freshly initialised ViLocal built from preset ``name`` plus ``overrides``."""
    return ViLocal(get_config(name, **overrides))
