"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse
from typing import Callable


def size_type(minimum: int = 16) -> Callable[[str], tuple[int, int]]:
    """An argparse type: ``"240x432"`` -> (240, 432) (height × width), each side ≥ ``minimum``."""

    def parse(text: str) -> tuple[int, int]:
        try:
            height, width = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"size must look like HxW (e.g. 240x432), got {text!r}") from None
        if height < minimum or width < minimum:
            raise argparse.ArgumentTypeError(f"size must be at least {minimum}x{minimum}, got {text!r}")
        return height, width

    return parse


#: Sizes for models and datasets (the network needs a few downsampling steps).
parse_size = size_type(16)
