"""The one ``HxW`` size parser (height × width), for flags, YAML values and source specs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from vilocal_dist.errors import ConfigError

#: Sizes for models and datasets: the network needs a few downsampling steps.
MIN_SIDE = 16


def parse_size(value: Any, *, minimum: int = MIN_SIDE, where: str = "size", source: str | Path | None = None) -> tuple[int, int]:
    """``"240x432"`` (or a ``[240, 432]`` pair) → ``(240, 432)``; each side ≥ ``minimum``, else a
    ConfigError naming ``where`` (the key or flag) and ``source``."""
    try:
        parts = value if isinstance(value, (list, tuple)) else str(value).lower().split("x")
        height, width = (int(v) for v in parts)
    except (ValueError, TypeError):
        raise ConfigError(f"{where} must look like HxW (e.g. 240x432), got {value!r}", source) from None
    if height < minimum or width < minimum:
        raise ConfigError(f"{where} must be at least {minimum}x{minimum}, got {value!r}", source)
    return height, width


def size_arg(minimum: int = MIN_SIDE) -> Callable[[str], tuple[int, int]]:
    """An argparse ``type=``: :func:`parse_size` with argparse's own error (flag name, exit 2)."""

    def parse(text: str) -> tuple[int, int]:
        try:
            return parse_size(text, minimum=minimum)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None

    parse.__name__ = "size"  # argparse names the type in its message: "invalid size value"
    return parse
