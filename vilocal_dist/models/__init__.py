"""ViLocal detector: HP3D filter, 3-D UniFormer encoder, light decoder, presets and registry."""

from vilocal_dist.models.decoder import LightDecoder
from vilocal_dist.models.hp3d import HP3D, hp3d_kernel
from vilocal_dist.models.registry import create_model, get_config, list_models
from vilocal_dist.models.uniformer import UniFormer3D
from vilocal_dist.models.vilocal import (
    PRESETS,
    ViLocal,
    ViLocalConfig,
    ViLocalEncoder,
    autocast_context,
    count_parameters,
)

__all__ = [
    "HP3D",
    "PRESETS",
    "LightDecoder",
    "UniFormer3D",
    "ViLocal",
    "ViLocalConfig",
    "ViLocalEncoder",
    "autocast_context",
    "count_parameters",
    "create_model",
    "get_config",
    "hp3d_kernel",
    "list_models",
]
