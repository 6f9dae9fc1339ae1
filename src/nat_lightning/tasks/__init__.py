import importlib

from .classifier import NatClassifier
from .segmenter import NatSegmenter

__all__ = ["NatClassifier", "NatSegmenter", "NatUniversalSegmenter"]
_LAZY = {"NatUniversalSegmenter": (".universal", "NatUniversalSegmenter")}


def __getattr__(name: str):
    """Mask2Former/OneFormer (transformers' heads) are imported on first use, off the
    classifier's and UPerNet's import path."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module, __name__), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
