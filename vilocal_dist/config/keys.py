"""The one key checker: unknown keys are errors that suggest the closest known key."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from vilocal_dist.errors import ConfigError

#: Errors list the known keys up to this many (beyond, the suggestion alone stays readable).
MAX_LISTED = 16


def closest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to ``name``, or ``""``."""
    match = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_keys(
    d: Any, allowed: Sequence[str], where: str = "", source: str | Path | None = None, what: str = "key"
) -> dict[str, Any]:
    """``d`` as a dict whose keys are all in ``allowed``; else a ConfigError
    ``SOURCE: where.key: unknown WHAT (did you mean 'k'?)`` (``source``: the file or flag), listing
    the known keys when there are few enough to read."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(d).__name__}", source)
    for key in d:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            known = f"; known: {', '.join(map(str, allowed))}" if len(allowed) <= MAX_LISTED else ""
            raise ConfigError(f"{name}: unknown {what}{closest(key, allowed)}{known}", source)
    return dict(d)
