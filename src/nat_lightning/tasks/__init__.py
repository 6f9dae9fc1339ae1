from .classifier import NatClassifier

__all__ = ["NatClassifier"]
