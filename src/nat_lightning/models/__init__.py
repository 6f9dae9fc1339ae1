"""NAT/DiNAT networks, their config and variants, and checkpoint loading (see nat.py, config.py)."""

from .config import VARIANTS, NatConfig, get_variant, list_variants
from .nat import (
    BackboneOutput,
    NatBackbone,
    NatForImageClassification,
    NatImageClassifierOutput,
    NatModel,
    NatModelOutput,
)

__all__ = [
    "VARIANTS",
    "BackboneOutput",
    "NatBackbone",
    "NatConfig",
    "NatForImageClassification",
    "NatImageClassifierOutput",
    "NatModel",
    "NatModelOutput",
    "get_variant",
    "list_variants",
]
