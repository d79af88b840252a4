"""``inpaint-regularizers``: per video, one Tuner over an inpainting method's weights (e.g. IIVI's
λ_a, λ_s), scored by ``selfval/psnr``; composed videos also log the true hole PSNR beside it.
Trials report the self-validation curve as they fit, so ``scheduler: asha`` stops weak λs early
(``training_iteration`` counts evaluations of the regularised phase).

Which options a method has is asked of the inpainting method registry (its config check), so
any registered method with searchable options works without a change here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vilocal_dist.config import check_number, from_mapping, parse_size
from vilocal_dist.console import tune_verbosity
from vilocal_dist.distributed.kinds.base import SweepKind, Validator, register_kind, scheduler_for, section, tune_space
from vilocal_dist.errors import ConfigError


@dataclass(frozen=True)
class InpaintData:
    """``data``: the videos to sweep on (sources and/or composed ones)."""

    sources: tuple[str, ...] = ()
    composed: int = 0
    frames: int = 24  # per composed video
    size: str = ""  # composed size (default 240x432) and, when given, the resize of the sources
    seed: int = 0
    max_frames: int = 0  # 0 = every frame of a source

    def videos(self) -> list[tuple[str, str]]:
        """(name, source spec) of every video, in order."""
        from vilocal_dist.distributed.forge import expand_sources

        size = parse_size(self.size or "240x432")
        return expand_sources(list(self.sources), composed=self.composed, frames=self.frames, size=size, seed=self.seed)


@register_kind
class InpaintRegularizers(SweepKind):
    name = "inpaint-regularizers"
    experiment = "vilocal-sweep-inpaint"
    metric = "selfval/psnr"
    data_keys = ("sources", "composed", "frames", "size", "seed", "max_frames")
    group = "video"

    def validator(self, base: Mapping[str, Any], source: Path) -> Validator:
        from vilocal_dist.inpaint.registry import check_method_config

        method = base.get("method", "iivi")
        cfg = {k: v for k, v in base.items() if k != "method"}
        check_method_config(method, cfg)
        return lambda values: check_method_config(method, {**cfg, **values})

    def check_param(self, name: str, source: Path) -> None:
        if name == "method":
            raise ConfigError("search_space.method: the method is fixed per sweep (base.method)", source)

    def parse_data(self, data: Mapping[str, Any], source: Path) -> InpaintData:
        d = from_mapping(InpaintData, section(data, self.data_keys, "data", source), "data", source)
        if not (d.sources or d.composed):
            raise ConfigError("data: give sources: [...] and/or composed: N (videos to sweep λ on)", source)
        for key in ("frames", "max_frames", "composed"):
            check_number(getattr(d, key), f"data.{key}", source, integer=True, minimum=0 if key != "frames" else 1)
        if d.size:
            parse_size(d.size, where="data.size", source=source)
        return d

    def exists(self, spec: Any, path: str) -> bool:
        from vilocal_dist.distributed.tuning import can_resume

        return any(can_resume(f"{path}/{video}") for video, _ in spec.data.videos())

    def fit(self, spec: Any, path: str, resume: bool, callbacks: list, prepared: Any) -> tuple[Any, bool]:
        """One Tuner per video (its own seeded Optuna study) at ``<storage>/<sweep>/<video>``; each
        resumes by itself when its folder exists. Stops at the first interrupted video."""
        from ray.tune.search.optuna import OptunaSearch

        from vilocal_dist.distributed.auto_lambda import video_sweep
        from vilocal_dist.distributed.tuning import is_complete

        base = dict(spec.base)
        method = base.pop("method", "iivi")
        if method == "iivi" and "recon_cache" not in base:
            # λ_a, λ_s act in phase 2 only: every trial of a video starts phase 2 from the same phase 1,
            # paid once per video and node instead of once per trial.
            from vilocal_dist.tracking.setup import home_dir

            base["recon_cache"] = str(home_dir() / "cache" / "iivi-recon")
        d: InpaintData = spec.data
        size = parse_size(d.size) if d.sources and d.size else None
        r = spec.resources
        out = []
        for video, source in d.videos():
            frames, masks, gt = _load(source, size, d.max_frames or None)
            results = video_sweep(
                frames, masks, params=tune_space(spec), name=f"{spec.name}/{video}", method=method, base_cfg=base,
                gt_frames=gt, num_samples=spec.num_samples, search_alg=OptunaSearch(seed=spec.seed),
                metric=spec.metric, mode=spec.mode, seed=spec.seed, cpus_per_trial=r.cpus_per_trial,
                gpus_per_trial=r.gpus_per_trial, max_concurrent=r.max_concurrent, callbacks=callbacks,
                constants={"video": video}, verbose=tune_verbosity(), scheduler=scheduler_for(spec),
            )  # fmt: skip
            out.append((video, results))
            if not is_complete(results, spec.num_samples):
                return out, False  # interrupted: later videos wait for --resume
        return out, True

    def rows(self, spec: Any, results: Any) -> list[dict[str, Any]]:
        from vilocal_dist.distributed.tuning import result_rows

        return [row for video, res in results for row in result_rows(res, extra=lambda c, v=video: {"video": v, **c["params"]})]


def _load(spec: str, size: tuple[int, int] | None, max_frames: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Frames, masks and (when the source has them, e.g. composed videos) clean backgrounds."""
    from vilocal_dist.data.sources import load_video, open_source

    src = open_source(spec)
    frames, masks = load_video(src, size=size, max_frames=max_frames)
    gt = None
    if src.has_backgrounds:
        gt = np.stack([b for _, b in zip(range(len(frames)), src.iter_backgrounds(size))])
    return frames, masks, gt
