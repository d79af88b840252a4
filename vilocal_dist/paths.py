"""Default locations, each overridable by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

#: Repository root when running from a checkout (…/vilocal_dist/paths.py -> repo).
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
