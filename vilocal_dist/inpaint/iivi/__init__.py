"""IIVI: implicit internal video inpainting (Ouyang, Wang & Chen, ICCV 2021), one network per video.

The method is ``IIVI`` (``"iivi"``, see ``vilocal_dist.inpaint.base``); ``fit_one_video`` runs it and
scores the hole against known true backgrounds.
"""

from vilocal_dist.inpaint.iivi.config import IIVIConfig
from vilocal_dist.inpaint.iivi.fit import IIVI, fit_one_video
from vilocal_dist.inpaint.iivi.generator import PRESETS, IIVIGenerator

__all__ = ["IIVI", "IIVIConfig", "IIVIGenerator", "PRESETS", "fit_one_video"]
