"""nat_lightning: train, fine-tune and evaluate Neighborhood Attention Transformers with Lightning."""

from .data import HFImageDataModule, HFSegmentationDataModule
from .models import (
    NatBackbone,
    NatConfig,
    NatForImageClassification,
    NatForSemanticSegmentation,
    NatModel,
    UperNetConfig,
    get_variant,
    list_variants,
)
from .ops import na2d
from .tasks import NatClassifier, NatSegmenter

__all__ = [
    "HFImageDataModule",
    "HFSegmentationDataModule",
    "NatBackbone",
    "NatClassifier",
    "NatConfig",
    "NatForImageClassification",
    "NatForSemanticSegmentation",
    "NatModel",
    "NatSegmenter",
    "UperNetConfig",
    "get_variant",
    "list_variants",
    "na2d",
]
