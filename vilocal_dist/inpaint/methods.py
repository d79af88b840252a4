"""Importing this module registers every built-in inpainting method."""

# Each import runs a @register_method decorator.
import vilocal_dist.inpaint.classical  # noqa: E402,F401  telea, ns, flowprop
import vilocal_dist.inpaint.intervi  # noqa: E402,F401  intervi
import vilocal_dist.inpaint.iivi  # noqa: E402,F401  iivi
