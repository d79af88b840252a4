"""Sweep specs: a small, explicit YAML schema (see sweeps/README.md), validated completely
before anything starts.

One file holds one sweep or, under ``sweeps:``, several named sub-sweeps. Top-level keys:
kind, name, experiment, metric, mode, num_samples, seed, search_space ({param: {type:
loguniform|uniform|quniform|choice, low, high[, q] | values}}), scheduler (asha or none),
resources, data, base. Every search range must be legal as a whole: both bounds (and every
choice) go through the same config validation a single run uses, so τ ≤ 0, α outside [0, 1] or a
negative λ anywhere in a range is rejected. Errors are ConfigErrors naming the file and the key.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from vilocal_dist.errors import ConfigError, VilocalError

DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "loguniform": ("low", "high"),
    "uniform": ("low", "high"),
    "quniform": ("low", "high", "q"),
    "choice": ("values",),
}
TOP_KEYS = (
    "kind", "name", "description", "experiment", "metric", "mode", "num_samples", "seed",
    "search_space", "scheduler", "resources", "data", "base",
)
SCHEDULER_KEYS = ("type", "grace_period", "reduction_factor", "max_t")
RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial", "workers_per_trial", "max_concurrent")
TRAIN_DATA_KEYS = ("root", "forge")
FORGE_DATA_KEYS = ("composed", "frames", "size", "seed", "methods", "test_fraction")
INPAINT_DATA_KEYS = ("sources", "composed", "frames", "size", "seed", "max_frames")


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a distribution over values of config key ``name``."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    q: float | None = None
    values: tuple[Any, ...] = ()

    def endpoints(self) -> tuple[Any, ...]:
        """Values whose legality implies the legality of the whole range (all config checks here
        are intervals)."""
        return self.values if self.type == "choice" else (self.low, self.high)


@dataclass(frozen=True)
class SchedulerSpec:
    """ASHA early stopping on ``training_iteration`` (one reported epoch / step); ``none`` = off."""

    type: str = "none"
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_t: int = 10


@dataclass(frozen=True)
class ResourceSpec:
    """Per-trial resources. ``max_concurrent`` 0 = as many as the cluster allows. CPUs/GPUs per
    trial apply to inpainting trials; a training trial is a 1-CPU driver plus its workers."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1  # Ray Train workers per trial (training kinds; 1 CPU [+1 GPU] each)
    max_concurrent: int = 0


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep. ``data`` and ``base`` are plain dicts checked per ``kind``."""

    path: Path
    name: str
    kind: str
    experiment: str
    metric: str
    mode: str
    num_samples: int
    seed: int
    search_space: tuple[ParamSpec, ...]
    scheduler: SchedulerSpec
    resources: ResourceSpec
    data: Mapping[str, Any]
    base: Mapping[str, Any]
    description: str = ""

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.search_space]


# --- per-kind rules -------------------------------------------------------------------------------


def _train_validator(base: Mapping[str, Any], source: Path) -> Callable[[Mapping[str, Any]], None]:
    from vilocal_dist.engines.config import TrainConfig

    TrainConfig.from_dict(dict(base), source=source)
    return lambda values: TrainConfig.from_dict({**base, **values}, source=source)


def _inpaint_validator(base: Mapping[str, Any], source: Path) -> Callable[[Mapping[str, Any]], None]:
    method = base.get("method", "iivi")
    cfg = {k: v for k, v in base.items() if k != "method"}
    if method == "iivi":
        from vilocal_dist.inpaint.iivi.config import IIVIConfig

        check = IIVIConfig.from_dict
    elif method == "intervi":
        from vilocal_dist.inpaint.intervi.config import resolve_config

        check = resolve_config
    else:
        raise ConfigError(f"method {method!r} has no regularizer weights to sweep (use iivi or intervi)", source)
    check(cfg)
    return lambda values: check({**cfg, **values})


#: Stage-1 fields a focal sweep may not search: its encoder is trained once and shared.
_STAGE1_FIELDS = ("tau", "contrast_samples", "model", "size_h", "size_w", "compress_fraction", "crf")

KINDS: dict[str, dict[str, Any]] = {
    "vilocal-contrastive": {
        "experiment": "vilocal-sweep-train", "metric": "val/f1", "mode": "max",
        "data_keys": TRAIN_DATA_KEYS, "validator": _train_validator, "frozen": (),
    },
    "vilocal-focal": {
        "experiment": "vilocal-sweep-train", "metric": "val/f1", "mode": "max",
        "data_keys": TRAIN_DATA_KEYS + ("encoder",), "validator": _train_validator,
        "frozen": _STAGE1_FIELDS,
    },
    "inpaint-regularizers": {
        "experiment": "vilocal-sweep-inpaint", "metric": "selfval/psnr", "mode": "max",
        "data_keys": INPAINT_DATA_KEYS, "validator": _inpaint_validator, "frozen": (),
    },
}


# --- parsing --------------------------------------------------------------------------------------


def _fail(path: Path, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{key}: {problem}", path)


def _check_keys(d: Any, allowed: Sequence[str], path: Path, where: str) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise _fail(path, where or "spec", f"must be a mapping, got {type(d).__name__}")
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(path, f"{where}.{key}" if where else str(key), f"unknown key{hint}; known: {', '.join(allowed)}")
    return dict(d)


def _number(value: Any, path: Path, key: str, *, integer: bool = False, minimum: float | None = None) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        raise _fail(path, key, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(path, key, f"must be ≥ {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def _param(name: str, d: Any, path: Path) -> ParamSpec:
    key = f"search_space.{name}"
    if not isinstance(d, Mapping) or "type" not in d:
        raise _fail(path, key, f"must be a mapping with a 'type' ({', '.join(DISTRIBUTIONS)})")
    kind = d["type"]
    if kind not in DISTRIBUTIONS:
        raise _fail(path, f"{key}.type", f"unknown distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")
    needed = DISTRIBUTIONS[kind]
    _check_keys(d, ("type",) + needed, path, key)
    missing = [k for k in needed if k not in d]
    if missing:
        raise _fail(path, key, f"{kind} needs {', '.join(needed)}; missing {', '.join(missing)}")
    if kind == "choice":
        values = d["values"]
        if not isinstance(values, list) or not values:
            raise _fail(path, f"{key}.values", "must be a non-empty list")
        return ParamSpec(name, kind, values=tuple(values))
    low = _number(d["low"], path, f"{key}.low")
    high = _number(d["high"], path, f"{key}.high")
    if not low < high:
        raise _fail(path, key, f"low must be < high, got low={low}, high={high}")
    if kind == "loguniform" and low <= 0:
        raise _fail(path, f"{key}.low", f"loguniform needs low > 0, got {low}")
    q = None
    if kind == "quniform":
        q = _number(d["q"], path, f"{key}.q")
        if q <= 0:
            raise _fail(path, f"{key}.q", f"must be > 0, got {q}")
    return ParamSpec(name, kind, low=low, high=high, q=q)


def _scheduler(d: Any, path: Path) -> SchedulerSpec:
    if d is None or d == "none" or (isinstance(d, Mapping) and d.get("type") == "none" and len(d) == 1):
        return SchedulerSpec()
    d = _check_keys(d, SCHEDULER_KEYS, path, "scheduler")
    if d.get("type") != "asha":
        raise _fail(path, "scheduler.type", f"must be 'asha' (or scheduler: none), got {d.get('type')!r}")
    s = SchedulerSpec(
        type="asha",
        grace_period=_number(d.get("grace_period", 1), path, "scheduler.grace_period", integer=True, minimum=1),
        reduction_factor=_number(d.get("reduction_factor", 2), path, "scheduler.reduction_factor"),
        max_t=_number(d.get("max_t", 10), path, "scheduler.max_t", integer=True, minimum=1),
    )
    if s.reduction_factor <= 1:
        raise _fail(path, "scheduler.reduction_factor", f"must be > 1, got {s.reduction_factor}")
    if s.max_t < s.grace_period:
        raise _fail(path, "scheduler.max_t", f"must be ≥ grace_period ({s.grace_period}), got {s.max_t}")
    return s


def _resources(d: Any, path: Path) -> ResourceSpec:
    d = _check_keys(d or {}, RESOURCE_KEYS, path, "resources")
    r = ResourceSpec(
        cpus_per_trial=_number(d.get("cpus_per_trial", 1), path, "resources.cpus_per_trial", minimum=0),
        gpus_per_trial=_number(d.get("gpus_per_trial", 0), path, "resources.gpus_per_trial", minimum=0),
        workers_per_trial=_number(d.get("workers_per_trial", 1), path, "resources.workers_per_trial", integer=True, minimum=1),
        max_concurrent=_number(d.get("max_concurrent", 0), path, "resources.max_concurrent", integer=True, minimum=0),
    )
    if r.cpus_per_trial <= 0:
        raise _fail(path, "resources.cpus_per_trial", "must be > 0")
    return r


def _check_train_resources(kind: str, d: Any, path: Path) -> None:
    # train_stage gives each Ray Train worker Ray Train's defaults (1 CPU; 1 GPU on a GPU
    # cluster): a per-trial CPU/GPU figure would be silently ignored, so refuse it.
    if kind != "inpaint-regularizers" and isinstance(d, Mapping):
        for key in ("cpus_per_trial", "gpus_per_trial"):
            if key in d:
                raise _fail(path, f"resources.{key}", "training sweeps size by workers_per_trial (each worker: 1 CPU, "
                            "and 1 GPU on a GPU cluster); remove this key")  # fmt: skip


def _data(kind: str, d: Any, path: Path) -> dict[str, Any]:
    d = _check_keys(d or {}, KINDS[kind]["data_keys"], path, "data")
    if "forge" in d:
        _check_keys(d["forge"], FORGE_DATA_KEYS, path, "data.forge")
    if kind == "inpaint-regularizers" and not (d.get("sources") or d.get("composed")):
        raise _fail(path, "data", "give sources: [...] and/or composed: N (videos to sweep λ on)")
    if kind != "inpaint-regularizers" and not d.get("root"):
        raise _fail(path, "data.root", "a forged dataset folder is needed (add forge: {...} to build it first)")
    for where, section in (("data", d), ("data.forge", d.get("forge") or {})):
        for key in ("composed", "frames", "max_frames"):
            if key in section:
                _number(section[key], path, f"{where}.{key}", integer=True, minimum=1)
        if "size" in section:
            parse_size(section["size"], path, f"{where}.size")
    return d


def parse_size(value: Any, path: Path, key: str) -> tuple[int, int]:
    """``"240x432"`` → (240, 432); at least 16×16."""
    try:
        h, w = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        raise _fail(path, key, f"size must be HxW (e.g. 240x432), got {value!r}") from None
    if h < 16 or w < 16:
        raise _fail(path, key, f"size must be at least 16x16, got {value!r}")
    return h, w


def build_spec(d: Mapping[str, Any], path: Path, default_name: str) -> SweepSpec:
    """Validate one sweep mapping (already overridden) into a SweepSpec."""
    d = _check_keys(d, TOP_KEYS, path, "")
    kind = d.get("kind")
    if kind not in KINDS:
        raise _fail(path, "kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    rules = KINDS[kind]
    mode = d.get("mode", rules["mode"])
    if mode not in ("max", "min"):
        raise _fail(path, "mode", f"must be max or min, got {mode!r}")
    space_d = d.get("search_space")
    if not isinstance(space_d, Mapping) or not space_d:
        raise _fail(path, "search_space", "must map at least one parameter to a distribution")
    space = tuple(_param(str(name), pd, path) for name, pd in space_d.items())
    base = d.get("base") or {}
    if not isinstance(base, Mapping):
        raise _fail(path, "base", "must be a mapping of config key: value")
    try:
        validate = rules["validator"](base, path)
    except VilocalError as exc:
        raise _fail(path, "base", exc.problem) from None
    for p in space:
        if p.name in rules["frozen"]:
            raise _fail(path, f"search_space.{p.name}", f"{kind} reuses one trained encoder; stage-1 keys can't vary")
        if p.name == "method":
            raise _fail(path, "search_space.method", "the method is fixed per sweep (base.method)")
        for value in p.endpoints():
            try:
                validate({p.name: value})
            except VilocalError as exc:
                raise _fail(path, f"search_space.{p.name}", f"{p.type} range includes an illegal value {value!r}: {exc.problem}") from None
    _check_train_resources(kind, d.get("resources"), path)
    resources = _resources(d.get("resources"), path)
    scheduler = _scheduler(d.get("scheduler"), path)
    if kind == "inpaint-regularizers" and scheduler.type != "none":
        raise _fail(path, "scheduler", "inpainting trials report once, at the end of the fit: use scheduler: none")
    name = d.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise _fail(path, "name", f"must be a plain folder name, got {name!r}")
    return SweepSpec(
        path=path,
        name=name,
        kind=kind,
        experiment=str(d.get("experiment", rules["experiment"])),
        metric=str(d.get("metric", rules["metric"])),
        mode=mode,
        num_samples=_number(d.get("num_samples", 8), path, "num_samples", integer=True, minimum=1),
        seed=_number(d.get("seed", 0), path, "seed", integer=True),
        search_space=space,
        scheduler=scheduler,
        resources=resources,
        data=_data(kind, d.get("data"), path),
        base=dict(base),
        description=str(d.get("description", "")),
    )


def _set_path(d: dict[str, Any], keys: list[str], value: Any, path: Path, item: str) -> None:
    node = d
    for key in keys[:-1]:
        child = node.get(key)
        if child is None or child == "none":
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item}: {key} is not a mapping", path)
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``{"num_samples": 2, "tau.base.stage1_epochs": 1}`` over the raw YAML. In a multi-sweep file
    a leading sub-sweep name scopes a key to that sub-sweep; other keys apply to every one."""
    out = copy.deepcopy(raw)
    for item, value in overrides.items():
        keys = item.split(".")
        if "sweeps" in out:
            subs = out["sweeps"]
            targets = [subs[keys[0]]] if keys[0] in subs else list(subs.values())
            keys = keys[1:] if keys[0] in subs else keys
            if not keys:
                raise ConfigError(f"--set {item}: names a whole sub-sweep, not a key", path)
        else:
            targets = [out]
        for target in targets:
            _set_path(target, keys, value, path, item)
    return out


def load_specs(
    path: str | Path, overrides: Mapping[str, Any] | None = None, only: Sequence[str] | None = None
) -> list[SweepSpec]:
    """Read, override and validate a spec file: one SweepSpec per (sub-)sweep.

    ``only`` keeps the named sub-sweeps (by key under ``sweeps:`` or by ``name``) before the
    overrides apply, so an unscoped ``--set`` need only fit the sub-sweeps that run.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read sweep spec ({exc.strerror})", path) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML ({exc})", path) from exc
    if not isinstance(raw, dict):
        raise ConfigError("a sweep spec must be a mapping", path)
    if only and isinstance(raw.get("sweeps"), Mapping):
        subs = raw["sweeps"]
        keep = {k: v for k, v in subs.items() if k in only or (isinstance(v, Mapping) and v.get("name") in only)}
        known = [f"{k} ({v.get('name', k)})" if isinstance(v, Mapping) else k for k, v in subs.items()]
        missing = [n for n in only if n not in keep and not any(isinstance(v, Mapping) and v.get("name") == n for v in keep.values())]
        if missing:
            raise _fail(path, "sweeps", f"no sub-sweep named {missing}; have {', '.join(known)}")
        raw = {**raw, "sweeps": keep}
    elif only:
        name = raw.get("name", path.stem)
        if any(n != name for n in only):
            raise _fail(path, "name", f"the file holds one sweep, {name!r}; --only {list(only)} does not match")
    raw = apply_overrides(raw, overrides or {}, path)
    if "sweeps" not in raw:
        return [build_spec(raw, path, path.stem)]
    _check_keys(raw, ("sweeps", "description"), path, "")
    subs = raw["sweeps"]
    if not isinstance(subs, Mapping) or not subs:
        raise _fail(path, "sweeps", "must map sub-sweep names to sweep specs")
    specs = [build_spec(sub, path, f"{path.stem}-{name}") for name, sub in subs.items()]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise _fail(path, "sweeps", f"sub-sweep names must differ, got {names}")
    return specs
