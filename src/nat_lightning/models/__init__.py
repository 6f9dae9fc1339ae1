"""NAT/DiNAT networks, their config and variants, checkpoint loading, UPerNet segmentation and
Mask2Former/OneFormer universal segmentation (see nat.py, config.py, upernet.py, universal.py)."""

import importlib

from .config import VARIANTS, NatConfig, get_variant, list_variants
from .nat import (
    BackboneOutput,
    NatBackbone,
    NatForImageClassification,
    NatImageClassifierOutput,
    NatModel,
    NatModelOutput,
)
from .upernet import NatForSemanticSegmentation, SemanticSegmenterOutput
from .upernet_config import UperNetConfig

__all__ = [
    "VARIANTS",
    "BackboneOutput",
    "NatBackbone",
    "NatConfig",
    "NatForImageClassification",
    "NatForSemanticSegmentation",
    "NatForUniversalSegmentation",
    "NatImageClassifierOutput",
    "NatModel",
    "NatModelOutput",
    "SemanticSegmenterOutput",
    "UperNetConfig",
    "get_variant",
    "list_variants",
]

_LAZY = {"NatForUniversalSegmentation": (".universal", "NatForUniversalSegmentation")}


def __getattr__(name: str):
    """Mask2Former/OneFormer (transformers' heads) are imported on first use, off the
    classifier's and UPerNet's import path."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module, __name__), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
