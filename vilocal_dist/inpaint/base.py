"""The one interface every inpainting method shares, and its registry.

A method is a function ``method(frames, masks, cfg, *, seed=0, progress=True,
workdir=None) -> InpaintResult`` where ``frames`` is uint8 ``T×H×W×3`` RGB and ``masks`` is
bool ``T×H×W`` (True = hole to fill). ``cfg`` is a plain dict of method options (flat scalars,
so a Tune search space and ``mlflow.log_params`` take it directly); unknown keys are an error.
``workdir`` is where a long method keeps checkpoints so a rerun resumes. Each method registers
a config check too, so entry points validate options before decoding videos or starting Ray.
The fan-out, the experiments and the CLI only ever use this interface.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from vilocal_dist.errors import ConfigError, InputError


@dataclass
class InpaintResult:
    """Composited output (known pixels untouched) plus what the method measured about itself."""

    frames: np.ndarray  # uint8 T×H×W×3, equal to the input outside the mask
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. selfval/psnr, train/loss
    config: dict[str, Any] = field(default_factory=dict)  # resolved config, for provenance


class InpaintMethod(Protocol):
    def __call__(
        self,
        frames: np.ndarray,
        masks: np.ndarray,
        cfg: dict[str, Any] | None = None,
        *,
        seed: int = 0,
        progress: bool = True,
        workdir: Path | None = None,
    ) -> InpaintResult: ...


_REGISTRY: dict[str, InpaintMethod] = {}
_CONFIG_CHECKS: dict[str, Callable[[dict[str, Any] | None], Any]] = {}


def register_method(
    name: str, *, config: Callable[[dict[str, Any] | None], Any]
) -> Callable[[InpaintMethod], InpaintMethod]:
    """Decorator: make ``fn`` available as ``get_method(name)``; ``config(cfg)`` resolves its
    options dict, raising ConfigError for unknown keys, wrong types or illegal values."""

    def wrap(fn: InpaintMethod) -> InpaintMethod:
        if name in _REGISTRY:
            raise ValueError(f"inpainting method {name!r} registered twice")
        _REGISTRY[name] = fn
        _CONFIG_CHECKS[name] = config
        return fn

    return wrap


def _load_builtin_methods() -> None:
    # Importing the method modules registers them; done lazily so `base` stays import-light.
    import vilocal_dist.inpaint.methods  # noqa: F401


def list_methods() -> list[str]:
    _load_builtin_methods()
    return sorted(_REGISTRY)


def get_method(name: str) -> InpaintMethod:
    """The registered method; an unknown name suggests the closest known one."""
    _load_builtin_methods()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown inpainting method {name!r}{hint}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def check_method_config(name: str, cfg: dict[str, Any] | None) -> Any:
    """``cfg`` resolved by method ``name``'s config check, without running the method."""
    get_method(name)
    return _CONFIG_CHECKS[name](cfg)


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


def check_cfg(cfg: dict[str, Any] | None, defaults: dict[str, Any], method: str) -> dict[str, Any]:
    """Merge ``cfg`` over ``defaults``; unknown keys are a ConfigError naming the method."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise ConfigError(f"{method}: unknown option(s) {unknown}; known: {sorted(defaults)}")
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
