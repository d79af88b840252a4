"""A complete inpainting plugin: a config class, a fill function and the ``Method`` that joins them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vilocal_dist.inpaint.base import Fill, Method, MethodConfig


@dataclass(frozen=True)
class MeanFillConfig(MethodConfig):
    shade: int = 0  # added to the mean colour, so a test can see the option arrive

    def problems(self) -> list[str]:
        return [] if 0 <= self.shade <= 255 else [f"shade must be in [0, 255], got {self.shade}"]


def fill(frames: np.ndarray, masks: np.ndarray, config: MeanFillConfig, *, seed: int, progress: bool,
         workdir: Path | None) -> Fill:
    """Every pixel becomes the mean colour of the video's known pixels (+ shade)."""
    mean = frames[~masks].mean(axis=0)
    colour = np.clip(np.rint(mean) + config.shade, 0, 255).astype(np.uint8)
    return Fill(np.broadcast_to(colour, frames.shape).copy(), metrics={"meanfill/mean": float(mean.mean())})


METHOD = Method("meanfill", MeanFillConfig, fill, "demo plugin: the mean known colour in every hole")
