"""Default locations, each overridable by an environment variable, and the shipped spec files.

Sweep specs and experiment configs are package data (``vilocal_dist/sweeps``, which a checkout
also shows as ``sweeps/``): an installed package (a wheel, the cluster image) has them wherever
it runs. Only the DAVIS default looks beside a checkout.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from vilocal_dist.errors import ConfigError

#: Repository root when running from a checkout (…/vilocal_dist/paths.py -> repo); in an
#: installed package this is site-packages, so nothing but the DAVIS default relies on it.
REPO_ROOT = Path(__file__).resolve().parent.parent


def davis_root() -> Path:
    """The shared DAVIS folder: $VILOCAL_DAVIS_ROOT, else ../shared/data/davis beside the checkout."""
    env = os.environ.get("VILOCAL_DAVIS_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "data" / "davis").resolve()


def vgg19_weights() -> Path | None:
    """Local VGG-19 state dict (torchvision layout) from $VILOCAL_VGG19_WEIGHTS, if set."""
    env = os.environ.get("VILOCAL_VGG19_WEIGHTS")
    return Path(env).expanduser().resolve() if env else None


def spec_dir() -> Path:
    """The shipped sweep specs (``experiments/`` below it: the experiment configs)."""
    return Path(str(resources.files("vilocal_dist") / "sweeps"))


def resolve_spec(name: str | Path, folder: str = "") -> Path:
    """A spec file: ``name`` itself when that file exists or names a folder; else, for a bare
    name (``demo``, ``demo.yaml``, ``sweeps/demo.yaml``), the shipped spec under
    ``spec_dir()/folder``, or a ConfigError listing the shipped ones."""
    path = Path(name).expanduser()
    bare = len(path.parts) == 1 or (len(path.parts) == 2 and path.parts[0] == "sweeps")
    if path.is_file() or not bare:
        return path  # its reader says what is wrong with it
    base = spec_dir() / folder
    shipped = base / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.name for p in base.glob("*.yaml")))
    raise ConfigError(f"no such spec file, and no shipped spec of that name (shipped: {known})", path)
