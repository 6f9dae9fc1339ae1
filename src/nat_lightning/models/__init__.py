from .config import VARIANTS, NatConfig
from .nat import BackboneOutput, NatBackbone, NatForImageClassification, NatModel, NatModelOutput

__all__ = ["VARIANTS", "BackboneOutput", "NatBackbone", "NatConfig", "NatForImageClassification", "NatModel",
           "NatModelOutput"]
