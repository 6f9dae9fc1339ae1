"""nat_lightning: train, fine-tune and evaluate Neighborhood Attention Transformers with Lightning."""

from .models import NatBackbone, NatConfig, NatForImageClassification, NatModel
from .ops import na2d

__all__ = ["NatBackbone", "NatConfig", "NatForImageClassification", "NatModel", "na2d"]
