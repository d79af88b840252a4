"""Argument types shared by the subcommands (thin wrappers over :mod:`vilocal_dist.config`)."""

from __future__ import annotations

from vilocal_dist.config import size_arg

#: ``--size HxW`` for models and datasets (each side ≥ 16: the network downsamples a few times).
parse_size = size_arg()
