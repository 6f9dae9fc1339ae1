from ..lazy import lazy_attributes
from .classifier import NatClassifier
from .segmenter import NatSegmenter

__all__ = ["NatClassifier", "NatSegmenter", "NatUniversalSegmenter"]
_LAZY = {"NatUniversalSegmenter": (".universal", "NatUniversalSegmenter")}
__getattr__ = lazy_attributes(__name__, _LAZY)
