"""nat_lightning: train, fine-tune and evaluate Neighborhood Attention Transformers with Lightning."""

import importlib

from .data import HFImageDataModule, HFPanopticDataModule, HFSegmentationDataModule
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


def __getattr__(name: str):
    """Mask2Former/OneFormer (transformers' heads) are imported on first use, off the
    classifier's and UPerNet's import path."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module, __name__), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
