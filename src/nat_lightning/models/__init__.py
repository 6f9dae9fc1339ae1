"""NAT/DiNAT networks, their config and variants, checkpoint loading, UPerNet segmentation and
Mask2Former/OneFormer universal segmentation (see nat.py, config.py, upernet.py, universal.py)."""

from .config import VARIANTS, NatConfig, get_variant, list_variants
from .nat import (
    BackboneOutput,
    NatBackbone,
    NatForImageClassification,
    NatImageClassifierOutput,
    NatModel,
    NatModelOutput,
)
from .universal import NatForUniversalSegmentation
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
