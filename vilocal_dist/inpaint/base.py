"""The one interface every inpainting method shares: ``Method``, its config class and its result.

A method is a ``Method(name, config_class, fill)``. Calling it,
``method(frames, masks, cfg, *, seed=0, progress=True, workdir=None) -> InpaintResult``, does what
every method needs in one place: it checks ``frames`` (uint8 ``T×H×W×3`` RGB) and ``masks`` (bool
``T×H×W``, True = hole to fill), resolves ``cfg`` (a plain dict of flat scalars, so a Tune search
space and ``mlflow.log_params`` take it directly) into the frozen config class, runs ``fill``,
checks what it returned, puts the known pixels back and records the resolved config. ``workdir``
is where a long method keeps checkpoints so a rerun resumes.

``fill(frames, masks, config, *, seed, progress, workdir) -> Fill`` is the method's own work. The
registry (``vilocal_dist.inpaint.registry``) lists the built-in methods and the plugins; nothing
here imports it, so method modules import this module and nothing imports back.
"""

from __future__ import annotations

import difflib
import types
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, TypeVar

import numpy as np

from vilocal_dist.errors import ConfigError, InputError, VilocalError


class MethodError(VilocalError):
    """A method (a plugin, an external program) failed or produced unusable output."""


@dataclass
class InpaintResult:
    """Composited output (known pixels untouched) plus what the method measured about itself."""

    frames: np.ndarray  # uint8 T×H×W×3, equal to the input outside the mask
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. selfval/psnr, train/loss
    config: dict[str, Any] = field(default_factory=dict)  # resolved config, for provenance


@dataclass
class Fill:
    """What a method's ``fill`` returns; the shared wrapper composites and records it."""

    frames: np.ndarray  # uint8 T×H×W×3 prediction; only its hole pixels reach the result
    metrics: dict[str, float] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # provenance beyond the config (device used, …)


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's options: a frozen dataclass of flat scalars with defaults.

    Subclasses list their range checks in ``problems()`` (checked on construction) and may name
    ``presets``: base values chosen by their ``preset`` field, below any explicitly given key.
    """

    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = types.MappingProxyType({})

    def problems(self) -> list[str]:
        """Human-readable problems with these values; empty when they are legal."""
        return []

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))


C = TypeVar("C", bound=MethodConfig)


def check_cfg(cfg: Mapping[str, Any] | None, defaults: Mapping[str, Any], method: str) -> dict[str, Any]:
    """Merge ``cfg`` over ``defaults``; unknown keys are a ConfigError naming the method and the
    closest known key."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(defaults), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{method}: unknown option(s) {unknown}{hint}; known: {sorted(defaults)}")
    return {**defaults, **cfg}


def coerce_option(method: str, name: str, value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default`` when that loses nothing; else a ConfigError.

    YAML and Tune hand over 1e3-style floats for ints, ints for floats and ints for strings.
    """
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    elif default is None and (value is None or isinstance(value, str)):
        return value
    expected = "str or None" if default is None else type(default).__name__
    raise ConfigError(f"{method}: option {name} expects {expected}, got {value!r} (wrong type)")


def build_config(config_class: type[C], cfg: Mapping[str, Any] | C | None, method: str) -> C:
    """``cfg`` (dict from YAML, ``--set``, Tune; or a config already built) as ``config_class``.

    Order: field defaults, then the chosen preset's values, then the given keys. Unknown keys,
    wrong types and illegal values are ConfigErrors prefixed with ``method``. The one place a
    method's options are resolved.
    """
    if isinstance(cfg, config_class):
        return cfg
    defaults = {f.name: f.default for f in fields(config_class)}
    given = check_cfg(cfg, defaults, method)
    explicit = set(cfg or {})
    if config_class.presets:
        preset = coerce_option(method, "preset", given["preset"], defaults["preset"])
        if preset not in config_class.presets:
            raise ConfigError(f"{method}: unknown preset {preset!r}; known: {sorted(config_class.presets)}")
        given |= {k: v for k, v in config_class.presets[preset].items() if k not in explicit}
    values = {k: coerce_option(method, k, v, defaults[k]) for k, v in given.items()}
    try:
        return config_class(**values)
    except ConfigError as exc:
        raise ConfigError(f"{method}: {exc.problem}") from None


def check_inputs(frames: np.ndarray, masks: np.ndarray) -> None:
    """Shared shape/dtype contract for every method; all-hole masks leave nothing to fill from."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 T×H×W×3, got {frames.dtype} {frames.shape}")
    if masks.shape != frames.shape[:3] or masks.dtype != np.bool_:
        raise ValueError(f"masks must be bool T×H×W matching frames {frames.shape[:3]}, got {masks.dtype} {masks.shape}")
    if masks.size and masks.all():
        # OpenCV returns such frames unchanged and the learnt methods fit nothing (NaN metrics):
        # either way the "inpainted" video would be a silent lie.
        raise InputError("every pixel of every frame is masked: no known pixels to inpaint from")


def composite(pred: np.ndarray, frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``pred`` inside the hole, the original frame outside (uint8 T×H×W×3)."""
    return np.where(masks[..., None], pred, frames).astype(np.uint8)


FillFn = Callable[..., Fill]  # (frames, masks, config, *, seed, progress, workdir) -> Fill


@dataclass(frozen=True)
class Method:
    """An inpainting method: its registry name, its config class and its ``fill`` function."""

    name: str
    config_class: type[MethodConfig]
    fill: FillFn
    summary: str = ""  # one line for `vilocal inpaint --method list`

    def resolve(self, cfg: Mapping[str, Any] | MethodConfig | None) -> MethodConfig:
        """``cfg`` checked and resolved, without running anything (entry points call this first)."""
        return build_config(self.config_class, cfg, self.name)

    def __call__(
        self,
        frames: np.ndarray,
        masks: np.ndarray,
        cfg: Mapping[str, Any] | MethodConfig | None = None,
        *,
        seed: int = 0,
        progress: bool = True,
        workdir: str | Path | None = None,
    ) -> InpaintResult:
        """Fill ``masks`` (bool T×H×W) in ``frames`` (uint8 T×H×W×3); known pixels stay as they are."""
        check_inputs(frames, masks)
        config = self.resolve(cfg)
        out = self.fill(frames, masks, config, seed=seed, progress=progress,
                        workdir=None if workdir is None else Path(workdir))  # fmt: skip
        pred = getattr(out, "frames", None)
        if not isinstance(out, Fill) or not isinstance(pred, np.ndarray) or pred.shape != frames.shape or pred.dtype != np.uint8:
            got = f"{pred.dtype} {pred.shape}" if isinstance(pred, np.ndarray) else type(out).__name__
            raise MethodError(f"method {self.name!r} returned {got}, expected a Fill of uint8 {frames.shape} frames")
        record = {"method": self.name, **asdict(config), **out.record, "seed": seed}
        return InpaintResult(frames=composite(pred, frames, masks), metrics=dict(out.metrics), config=record)
