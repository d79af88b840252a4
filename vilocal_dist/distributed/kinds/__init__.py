"""Sweep kinds as registered objects (see :mod:`.base`). Importing this package registers the
built-in kinds, one module each; a new kind is one more module imported here."""

from vilocal_dist.distributed.kinds.base import SweepKind, get_kind, list_kinds, register_kind, unregister_kind
from vilocal_dist.distributed.kinds import contrastive, focal, inpaint_regularizers  # noqa: E402,F401  built-ins

__all__ = ["SweepKind", "get_kind", "list_kinds", "register_kind", "unregister_kind"]
