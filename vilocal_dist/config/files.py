"""The one YAML loader: ``yaml.safe_load`` with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vilocal_dist.errors import ConfigError


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping in YAML file ``path`` (empty file: ``{}``). ``what`` names the kind of file in
    errors ("sweep spec", "training config"); an unreadable file, invalid YAML or a top level that
    is not a mapping is a one-line ConfigError naming the file."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} ({exc.strerror})", path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML ({' '.join(str(exc).split())})", path) from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"a {what} must be a mapping of key: value, got {type(loaded).__name__}", path)
    return loaded
