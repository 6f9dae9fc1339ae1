from .classifier import NatClassifier
from .segmenter import NatSegmenter

__all__ = ["NatClassifier", "NatSegmenter"]
