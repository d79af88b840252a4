"""Sweep specs: a small, explicit YAML schema (see sweeps/README.md), validated completely
before anything starts.

One file holds one sweep or, under ``sweeps:``, several named sub-sweeps. Top-level keys:
kind, name, experiment, metric, mode, num_samples, seed, search_space ({param: {type:
loguniform|uniform|quniform|choice, low, high[, q] | values}}), scheduler (asha or none),
resources, data, base. Every search range must be legal as a whole: both bounds (and every
choice) go through the same config validation a single run uses, so τ ≤ 0, α outside [0, 1] or a
negative λ anywhere in a range is rejected. Errors are ConfigErrors naming the file and the key.
What each kind accepts (data, base, resources, scheduler) is asked of its registered
:class:`~vilocal_dist.distributed.kinds.SweepKind`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from vilocal_dist.config import check_keys, check_number, load_yaml, set_dotted
from vilocal_dist.distributed.kinds import SweepKind, get_kind
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
    """A validated sweep. ``data`` is the kind's typed data recipe; ``base`` the config keys every
    trial shares, checked by the kind."""

    path: Path
    name: str
    kind: SweepKind
    experiment: str
    metric: str
    mode: str
    num_samples: int
    seed: int
    search_space: tuple[ParamSpec, ...]
    scheduler: SchedulerSpec
    resources: ResourceSpec
    data: Any
    base: Mapping[str, Any]
    description: str = ""

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.search_space]


# --- parsing --------------------------------------------------------------------------------------


def _fail(path: Path, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{key}: {problem}", path)


def _param(name: str, d: Any, path: Path) -> ParamSpec:
    key = f"search_space.{name}"
    if not isinstance(d, Mapping) or "type" not in d:
        raise _fail(path, key, f"must be a mapping with a 'type' ({', '.join(DISTRIBUTIONS)})")
    kind = d["type"]
    if kind not in DISTRIBUTIONS:
        raise _fail(path, f"{key}.type", f"unknown distribution {kind!r}; known: {', '.join(DISTRIBUTIONS)}")
    needed = DISTRIBUTIONS[kind]
    check_keys(d, ("type",) + needed, key, path)
    missing = [k for k in needed if k not in d]
    if missing:
        raise _fail(path, key, f"{kind} needs {', '.join(needed)}; missing {', '.join(missing)}")
    if kind == "choice":
        values = d["values"]
        if not isinstance(values, list) or not values:
            raise _fail(path, f"{key}.values", "must be a non-empty list")
        return ParamSpec(name, kind, values=tuple(values))
    low = check_number(d["low"], f"{key}.low", path)
    high = check_number(d["high"], f"{key}.high", path)
    if not low < high:
        raise _fail(path, key, f"low must be < high, got low={low}, high={high}")
    if kind == "loguniform" and low <= 0:
        raise _fail(path, f"{key}.low", f"loguniform needs low > 0, got {low}")
    q = None
    if kind == "quniform":
        q = check_number(d["q"], f"{key}.q", path)
        if q <= 0:
            raise _fail(path, f"{key}.q", f"must be > 0, got {q}")
    return ParamSpec(name, kind, low=low, high=high, q=q)


def _scheduler(d: Any, path: Path) -> SchedulerSpec:
    if d is None or d == "none" or (isinstance(d, Mapping) and d.get("type") == "none" and len(d) == 1):
        return SchedulerSpec()
    d = check_keys(d, SCHEDULER_KEYS, "scheduler", path)
    if d.get("type") != "asha":
        raise _fail(path, "scheduler.type", f"must be 'asha' (or scheduler: none), got {d.get('type')!r}")
    s = SchedulerSpec(
        type="asha",
        grace_period=check_number(d.get("grace_period", 1), "scheduler.grace_period", path, integer=True, minimum=1),
        reduction_factor=check_number(d.get("reduction_factor", 2), "scheduler.reduction_factor", path),
        max_t=check_number(d.get("max_t", 10), "scheduler.max_t", path, integer=True, minimum=1),
    )
    if s.reduction_factor <= 1:
        raise _fail(path, "scheduler.reduction_factor", f"must be > 1, got {s.reduction_factor}")
    if s.max_t < s.grace_period:
        raise _fail(path, "scheduler.max_t", f"must be ≥ grace_period ({s.grace_period}), got {s.max_t}")
    return s


def _resources(d: Any, path: Path) -> ResourceSpec:
    d = check_keys(d or {}, RESOURCE_KEYS, "resources", path)
    r = ResourceSpec(
        cpus_per_trial=check_number(d.get("cpus_per_trial", 1), "resources.cpus_per_trial", path, minimum=0),
        gpus_per_trial=check_number(d.get("gpus_per_trial", 0), "resources.gpus_per_trial", path, minimum=0),
        workers_per_trial=check_number(d.get("workers_per_trial", 1), "resources.workers_per_trial", path, integer=True, minimum=1),
        max_concurrent=check_number(d.get("max_concurrent", 0), "resources.max_concurrent", path, integer=True, minimum=0),
    )
    if r.cpus_per_trial <= 0:
        raise _fail(path, "resources.cpus_per_trial", "must be > 0")
    return r


def build_spec(d: Mapping[str, Any], path: Path, default_name: str) -> SweepSpec:
    """Validate one sweep mapping (already overridden) into a SweepSpec."""
    d = check_keys(d, TOP_KEYS, "", path)
    kind = get_kind(d.get("kind"), path)
    mode = d.get("mode", kind.mode)
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
        validate = kind.validator(base, path)
    except VilocalError as exc:
        raise _fail(path, "base", exc.problem) from None
    for p in space:
        kind.check_param(p.name, path)
        for value in p.endpoints():
            try:
                validate({p.name: value})
            except VilocalError as exc:
                raise _fail(path, f"search_space.{p.name}", f"{p.type} range includes an illegal value {value!r}: {exc.problem}") from None
    if isinstance(d.get("resources"), Mapping):
        kind.check_resources(d["resources"], path)
    resources = _resources(d.get("resources"), path)
    scheduler = _scheduler(d.get("scheduler"), path)
    kind.check_scheduler(scheduler, path)
    name = d.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise _fail(path, "name", f"must be a plain folder name, got {name!r}")
    return SweepSpec(
        path=path,
        name=name,
        kind=kind,
        experiment=str(d.get("experiment", kind.experiment)),
        metric=str(d.get("metric", kind.metric)),
        mode=mode,
        num_samples=check_number(d.get("num_samples", 8), "num_samples", path, integer=True, minimum=1),
        seed=check_number(d.get("seed", 0), "seed", path, integer=True),
        search_space=space,
        scheduler=scheduler,
        resources=resources,
        data=kind.parse_data(d.get("data") or {}, path),
        base=dict(base),
        description=str(d.get("description", "")),
    )


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``{"num_samples": 2, "tau.base.stage1_epochs": 1}`` over the raw YAML (the shared dotted
    ``--set`` syntax). In a multi-sweep file a leading sub-sweep name scopes a key to that
    sub-sweep; other keys apply to every one."""
    out = copy.deepcopy(raw)
    for item, value in overrides.items():
        dotted = item
        targets = [out]
        if "sweeps" in out:
            subs = out["sweeps"]
            first, _, rest = item.partition(".")
            scoped = first in subs
            if scoped and not rest:
                raise ConfigError(f"--set {item}: names a whole sub-sweep, not a key", path)
            targets = [subs[first]] if scoped else list(subs.values())
            dotted = rest if scoped else item
        for target in targets:
            set_dotted(target, dotted, value, path)
    return out


def _select(raw: dict[str, Any], only: Sequence[str], path: Path) -> dict[str, Any]:
    """Keep the sub-sweeps named in ``only`` (by key under ``sweeps:`` or by ``name``)."""
    if isinstance(raw.get("sweeps"), Mapping):
        subs = raw["sweeps"]
        named = {k: v.get("name", k) if isinstance(v, Mapping) else k for k, v in subs.items()}
        keep = {k: v for k, v in subs.items() if k in only or named[k] in only}
        missing = [n for n in only if n not in keep and n not in {named[k] for k in keep}]
        if missing:
            known = ", ".join(f"{k} ({n})" for k, n in named.items())
            raise _fail(path, "sweeps", f"no sub-sweep named {missing}; have {known}")
        return {**raw, "sweeps": keep}
    name = raw.get("name", path.stem)
    if any(n != name for n in only):
        raise _fail(path, "name", f"the file holds one sweep, {name!r}; --only {list(only)} does not match")
    return raw


def load_specs(
    path: str | Path, overrides: Mapping[str, Any] | None = None, only: Sequence[str] | None = None
) -> list[SweepSpec]:
    """Read, override and validate a spec file: one SweepSpec per (sub-)sweep.

    ``only`` keeps the named sub-sweeps (by key under ``sweeps:`` or by ``name``) before the
    overrides apply, so an unscoped ``--set`` need only fit the sub-sweeps that run.
    """
    path = Path(path)
    raw = load_yaml(path, "sweep spec")
    if only:
        raw = _select(raw, only, path)
    raw = apply_overrides(raw, overrides or {}, path)
    if "sweeps" not in raw:
        return [build_spec(raw, path, path.stem)]
    check_keys(raw, ("sweeps", "description"), "", path)
    subs = raw["sweeps"]
    if not isinstance(subs, Mapping) or not subs:
        raise _fail(path, "sweeps", "must map sub-sweep names to sweep specs")
    specs = [build_spec(sub, path, f"{path.stem}-{name}") for name, sub in subs.items()]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise _fail(path, "sweeps", f"sub-sweep names must differ, got {names}")
    return specs
