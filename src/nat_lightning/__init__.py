"""nat_lightning: train, fine-tune and evaluate Neighborhood Attention Transformers with Lightning."""

from .data import HFImageDataModule
from .models import NatBackbone, NatConfig, NatForImageClassification, NatModel, get_variant, list_variants
from .ops import na2d
from .tasks import NatClassifier

__all__ = [
    "HFImageDataModule",
    "NatBackbone",
    "NatClassifier",
    "NatConfig",
    "NatForImageClassification",
    "NatModel",
    "get_variant",
    "list_variants",
    "na2d",
]
