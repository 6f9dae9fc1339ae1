"""nat_lightning: train, fine-tune and evaluate Neighborhood Attention Transformers with Lightning."""

from .data import HFImageDataModule, HFPanopticDataModule, HFSegmentationDataModule
from .lazy import lazy_attributes
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
    "HFPanopticDataModule",
    "HFSegmentationDataModule",
    "NatBackbone",
    "NatClassifier",
    "NatConfig",
    "NatForImageClassification",
    "NatForSemanticSegmentation",
    "NatForUniversalSegmentation",
    "NatModel",
    "NatSegmenter",
    "NatUniversalSegmenter",
    "UperNetConfig",
    "get_variant",
    "list_variants",
    "na2d",
]

_LAZY = {
    "NatForUniversalSegmentation": (".models.universal", "NatForUniversalSegmentation"),
    "NatUniversalSegmenter": (".tasks.universal", "NatUniversalSegmenter"),
}
__getattr__ = lazy_attributes(__name__, _LAZY)
