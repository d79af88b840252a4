"""Every inpainting method by name: the built-in ones, and plugins installed as Python packages.

A plugin is a package that declares an entry point in the group ``vilocal_dist.inpaint_methods``
whose name is the method's name and whose object is a ``vilocal_dist.inpaint.base.Method``::

    [project.entry-points."vilocal_dist.inpaint_methods"]
    meanfill = "my_package.meanfill:METHOD"

It then works wherever a built-in does (``vilocal inpaint --method``, ``vilocal forge --methods``,
sweeps and experiments), with its options checked by its config class before any work starts.
A plugin that fails to import or is not a ``Method`` does not stop the built-ins: asking for it
by name gives one line naming the entry point and the problem.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import logging
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Collection, Mapping, NamedTuple

from vilocal_dist.errors import ConfigError
from vilocal_dist.inpaint.base import Method, MethodConfig
from vilocal_dist.inpaint.classical import FLOWPROP, NS, TELEA
from vilocal_dist.inpaint.command import COMMAND
from vilocal_dist.inpaint.iivi.fit import IIVI
from vilocal_dist.inpaint.intervi.train import INTERVI

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "vilocal_dist.inpaint_methods"
BUILTIN: dict[str, Method] = {m.name: m for m in (TELEA, NS, FLOWPROP, IIVI, INTERVI, COMMAND)}


class Plugins(NamedTuple):
    methods: dict[str, Method]  # name -> method, for the plugins that loaded
    broken: dict[str, str]  # name -> one-line problem, for those that did not


def _plugin_problem(entry: importlib.metadata.EntryPoint, obj: Any, taken: Collection[str]) -> str | None:
    if not isinstance(obj, Method):
        return f"is a {type(obj).__name__}, not a vilocal_dist.inpaint.base.Method"
    if obj.name != entry.name:
        return f"names its method {obj.name!r}; the entry point's name must be the same"
    if entry.name in taken:
        return f"uses the name {entry.name!r}, which is taken by a built-in method or another plugin"
    config = obj.config_class
    if not (isinstance(config, type) and issubclass(config, MethodConfig) and is_dataclass(config)):
        return "has a config_class that is not a dataclass subclass of MethodConfig"
    no_default = [f.name for f in fields(config) if f.default is MISSING]
    if no_default:
        return f"has config options without a plain default value: {no_default}"
    return None


def load_plugins(taken: Collection[str] = ()) -> Plugins:
    """Import every entry point of ``ENTRY_POINT_GROUP`` on the current path and check it."""
    methods: dict[str, Method] = {}
    broken: dict[str, str] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = f" from {entry.dist.name} {entry.dist.version}" if entry.dist is not None else ""
        where = f"inpainting plugin {entry.name!r} ({entry.value}{dist})"
        try:
            obj = entry.load()
        except Exception as exc:  # any error of third-party code: report it, keep the built-ins
            first_line = (str(exc).strip().splitlines() or [""])[0]
            broken[entry.name] = f"{where} failed to load: {type(exc).__name__}: {first_line}"
            continue
        problem = _plugin_problem(entry, obj, {*taken, *methods})
        if problem:
            broken.setdefault(entry.name, f"{where} {problem}")
        else:
            methods[entry.name] = obj
    for message in broken.values():
        log.debug("%s", message)
    return Plugins(methods, broken)


@functools.cache
def plugins() -> Plugins:
    """The installed plugins, loaded once per process on first use."""
    return load_plugins(BUILTIN)


def list_methods() -> list[str]:
    """Names of every usable method (built-in and plugins), sorted."""
    return sorted({**BUILTIN, **plugins().methods})


def get_method(name: str) -> Method:
    """The method called ``name``; an unknown name suggests the closest known one."""
    if name in BUILTIN:
        return BUILTIN[name]
    loaded = plugins()
    if name in loaded.methods:
        return loaded.methods[name]
    if name in loaded.broken:
        raise ConfigError(loaded.broken[name])
    known = list_methods()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown inpainting method {name!r}{hint}; known: {', '.join(known)}")


def check_method_config(name: str, cfg: Mapping[str, Any] | None) -> MethodConfig:
    """``cfg`` resolved by method ``name``'s config class, without running the method."""
    return get_method(name).resolve(cfg)
