"""Training objectives: stage 1 pixel contrastive loss, stage 2 focal loss (each returns a dict)."""

from vilocal_dist.losses.contrastive import PixelContrastiveLoss, labels_at, pixel_contrastive_loss
from vilocal_dist.losses.focal import FocalLoss, focal_loss

__all__ = ["FocalLoss", "PixelContrastiveLoss", "focal_loss", "labels_at", "pixel_contrastive_loss"]
