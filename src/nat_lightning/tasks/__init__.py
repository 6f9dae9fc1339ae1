from .classifier import NatClassifier
from .segmenter import NatSegmenter
from .universal import NatUniversalSegmenter

__all__ = ["NatClassifier", "NatSegmenter", "NatUniversalSegmenter"]
