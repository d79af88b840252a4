"""InterVI: "An Internal Learning Approach to Video Inpainting" (Zhang et al., ICCV 2019).

One Deep-Image-Prior network per video maps a fixed noise map per frame to that frame and to its
flows to neighbouring frames; trained only on the video's known pixels, with an image–flow
consistency loss that carries content into the holes. The method is ``INTERVI`` (``"intervi"``).
"""

from vilocal_dist.inpaint.intervi.config import InterVIConfig, resolve_config
from vilocal_dist.inpaint.intervi.train import INTERVI, fit_intervi

__all__ = ["INTERVI", "InterVIConfig", "fit_intervi", "resolve_config"]
