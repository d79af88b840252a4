"""vilocal_dist: Ray-distributed ViLocal video-inpainting localization and internal video inpainting.

Layers (a sub-package each; lower layers never import higher ones):
    video, data      -> decode/encode, validation, DAVIS layout, composed videos, clips, manifests
    models, losses   -> ViLocal networks and objectives
    inpaint          -> per-video inpainting methods, their losses and quality metrics
    engines          -> plain training / evaluation / detection loops (no Ray, no MLflow)
    distributed      -> Ray Train launchers, Tune fan-out and sweeps
    tracking         -> MLflow
    experiments, bench, cli -> user-facing entry points
"""

__version__ = "0.1.0"
