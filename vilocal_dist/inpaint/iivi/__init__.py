"""IIVI: implicit internal video inpainting (Ouyang, Wang & Chen, ICCV 2021), one network per video.

Importing this package registers the method ``"iivi"`` (see ``vilocal_dist.inpaint.base``).
"""

from vilocal_dist.inpaint.iivi.config import IIVIConfig
from vilocal_dist.inpaint.iivi.fit import fit_one_video
from vilocal_dist.inpaint.iivi.generator import PRESETS, IIVIGenerator

__all__ = ["IIVIConfig", "IIVIGenerator", "PRESETS", "fit_one_video"]
