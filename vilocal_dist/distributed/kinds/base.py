"""What a sweep kind is: the base class every kind subclasses, and the registry of kinds.

A kind decides what one trial of a sweep does and how its spec is checked. Adding a kind means
one new module that subclasses :class:`SweepKind`, decorates it with :func:`register_kind`, and is
imported by ``kinds/__init__.py`` (a test may register one of its own the same way). The spec
parser (``distributed.spec``) and the driver (``distributed.sweep``) only call these hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from vilocal_dist.config import check_keys, closest
from vilocal_dist.errors import ConfigError

if TYPE_CHECKING:  # type hints only: spec imports this module
    from vilocal_dist.distributed.spec import SchedulerSpec, SweepSpec

#: A check of searched values (one endpoint of a range at a time); raises a VilocalError.
Validator = Callable[[Mapping[str, Any]], None]


class SweepKind:
    """One kind of sweep. Class attributes give the spec's defaults; the hooks, in the order they
    run: :meth:`validator`, :meth:`check_param`, :meth:`parse_data`, :meth:`check_resources`,
    :meth:`check_scheduler` (all while the spec is read), :meth:`check_inputs` (before Ray
    starts), :meth:`exists`, :meth:`prepare`, :meth:`fit`, :meth:`rows` (while it runs)."""

    name: ClassVar[str]
    experiment: ClassVar[str]  # default MLflow experiment
    metric: ClassVar[str]  # default metric (and mode) the searcher optimises
    mode: ClassVar[str] = "max"
    data_keys: ClassVar[tuple[str, ...]] = ()
    group: ClassVar[str | None] = None  # report rows grouped by this column (e.g. per video)

    def validator(self, base: Mapping[str, Any], source: Path) -> Validator:
        """Check the spec's ``base`` now; return the check of ``base`` ∪ searched values."""
        raise NotImplementedError

    def check_param(self, name: str, source: Path) -> None:
        """Refuse a parameter this kind cannot search (``search_space.NAME``)."""

    def parse_data(self, data: Mapping[str, Any], source: Path) -> Any:
        """The ``data:`` section as this kind's typed, checked recipe."""
        raise NotImplementedError

    def check_resources(self, resources: Mapping[str, Any], source: Path) -> None:
        """Refuse ``resources:`` keys this kind would silently ignore."""

    def check_scheduler(self, scheduler: SchedulerSpec, source: Path) -> None:
        """Refuse a scheduler this kind's trials cannot use."""

    def check_inputs(self, spec: SweepSpec) -> None:
        """Inputs that must exist before Ray starts (else every trial fails on them in turn)."""

    def exists(self, spec: SweepSpec, path: str) -> bool:
        """Whether results of this sweep already exist at ``path`` (resume or refuse)."""
        from vilocal_dist.distributed.tuning import can_resume

        return can_resume(path)

    def prepare(self, spec: SweepSpec) -> Any:
        """Work before the sweep's parent MLflow run opens (it may record runs of its own)."""
        return None

    def fit(self, spec: SweepSpec, path: str, resume: bool, callbacks: list, prepared: Any) -> tuple[Any, bool]:
        """Run the trials: (results, complete)."""
        raise NotImplementedError

    def rows(self, spec: SweepSpec, results: Any) -> list[dict[str, Any]]:
        """One table row per trial (its params and last metrics)."""
        from vilocal_dist.distributed.tuning import result_rows

        return result_rows(results, extra=lambda c: dict(c["params"]))


_KINDS: dict[str, SweepKind] = {}


def register_kind(cls: type[SweepKind]) -> type[SweepKind]:
    """Class decorator: make ``cls`` the sweep kind ``cls.name``."""
    if cls.name in _KINDS:
        raise ValueError(f"sweep kind {cls.name!r} registered twice")
    _KINDS[cls.name] = cls()
    return cls


def unregister_kind(name: str) -> None:
    """Remove a kind (tests that register one of their own)."""
    _KINDS.pop(name, None)


def list_kinds() -> list[str]:
    return list(_KINDS)


def get_kind(name: Any, source: Path | None = None) -> SweepKind:
    """The registered kind ``name``; else a ConfigError suggesting the closest one."""
    if name not in _KINDS:
        raise ConfigError(f"kind: must be one of {', '.join(_KINDS)}, got {name!r}{closest(str(name), _KINDS)}", source)
    return _KINDS[name]


def section(d: Any, allowed: Sequence[str], where: str, source: Path) -> dict[str, Any]:
    """A spec section with only ``allowed`` keys (errors name the file and the dotted key)."""
    return check_keys(d or {}, allowed, where, source)


def tune_space(spec: SweepSpec) -> dict[str, Any]:
    """The spec's search space as Tune distributions (OptunaSearch converts them)."""
    from ray import tune

    make = {"loguniform": lambda p: tune.loguniform(p.low, p.high), "uniform": lambda p: tune.uniform(p.low, p.high),
            "quniform": lambda p: tune.quniform(p.low, p.high, p.q), "choice": lambda p: tune.choice(list(p.values))}
    return {p.name: make[p.type](p) for p in spec.search_space}


def scheduler_for(spec: SweepSpec) -> Any:
    """ASHA on ``training_iteration`` when the spec asks for it, else None."""
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    if s.type != "asha":
        return None
    # stop_last_trials=False: a trial reaching max_t finishes on its own, so its Train run still
    # selects and logs its best checkpoint instead of being killed at its last report.
    return ASHAScheduler(
        time_attr="training_iteration", grace_period=s.grace_period, reduction_factor=s.reduction_factor,
        max_t=s.max_t, stop_last_trials=False,
    )
