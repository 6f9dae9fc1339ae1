"""NAT/DiNAT networks, their config and variants, checkpoint loading, UPerNet segmentation and
Mask2Former/OneFormer universal segmentation (see nat.py, config.py, upernet.py, universal.py)."""

from ..lazy import lazy_attributes
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
__getattr__ = lazy_attributes(__name__, _LAZY)
