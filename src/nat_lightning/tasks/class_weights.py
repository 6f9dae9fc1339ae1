"""Per-class loss weights against class imbalance: the ``class_weights`` argument every task takes.

``class_weights`` is ``"auto"``, ``"none"`` (or None) or a list of one weight per class:

- ``"auto"``: inverse class frequency, scikit-learn's ``"balanced"`` formula
  ``n_total / (n_classes * count[c])``, from the training split's label counts that the data module
  gives (``label_counts()``: examples per class for classification, labelled pixels per class
  for segmentation). With these weights the average weight over the counted examples (pixels)
  is 1. A class the counts never hold gets the largest weight of the others (it is the rarest
  there is), with a warning naming it. Counted once per fit and printed (rank zero).
- a list: the weights as given; its length must be the number of classes, none negative.

The losses divide the weighted sum by the sum of the weights of their targets (PyTorch's weighted
mean), so only the ratios between weights matter, not their scale.

Multi-label classification (tasks.multi_label) takes the weights as BCEWithLogitsLoss's
``pos_weight``, the weight of each class's positive term against its negative one, and there
the scale matters: ``auto`` is negatives / positives per class of the training split (PyTorch's
recipe), so that each class's positives weigh as much as its negatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

MAX_NAMED = 10  # classes an error or warning names


def check_class_weights(value: str | Sequence[float] | None) -> None:
    """A ValueError for a ``class_weights`` that no class count can fix: an unknown string, a
    negative or non-finite weight, or weights that are all zero."""
    if value is None or isinstance(value, str):
        if value not in (None, "none", "auto"):
            raise ValueError(
                f"class_weights={value!r}: expected 'auto' (inverse class frequency of the "
                "training split), 'none', or a list of one weight per class, e.g. [1.0, 5.0]"
            )
        return
    weights = [float(w) for w in value]
    bad = [w for w in weights if not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(
            f"class_weights={list(value)}: weights must be finite and >= 0, got {bad[:MAX_NAMED]}"
        )
    if not any(weights):
        raise ValueError(
            f"class_weights={list(value)}: every weight is 0, so no example would count; "
            "give at least one positive weight"
        )


def given_weights(value: Sequence[float], id2label: dict[int, str]) -> torch.Tensor:
    """The list as a tensor, checked against the classes (its length, naming them)."""
    check_class_weights(value)
    if len(value) != len(id2label):
        names = list(id2label.values())
        more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
        raise ValueError(
            f"class_weights has {len(value)} weights but the model has {len(id2label)} classes "
            f"({names[:MAX_NAMED]}{more}); give one weight per class, in class id order, or "
            "class_weights=auto"
        )
    return torch.tensor([float(w) for w in value], dtype=torch.float32)


def balanced_weights(counts: Sequence[int], id2label: dict[int, str]) -> torch.Tensor:
    """scikit-learn's ``"balanced"`` weights ``n_total / (n_classes * count[c])`` of the classes'
    counts; a class with count 0 gets the largest weight of the others (see the module)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if len(counts) != len(id2label):
        raise ValueError(
            f"class_weights=auto: the data counted {len(counts)} classes but the model has "
            f"{len(id2label)}"
        )
    if not counts.any():
        raise ValueError(
            "class_weights=auto: the training split's labels hold no class at all (every label "
            "is ignored); give class_weights as a list"
        )
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (len(counts) * counts[present])
    weights[~present] = weights[present].max()
    return weights.float()


def absent_classes(counts: Sequence[int], id2label: dict[int, str]) -> list[str]:
    """The names of the classes with count 0."""
    return [id2label.get(i, str(i)) for i, n in enumerate(counts) if n == 0]


def weights_line(weights: torch.Tensor, id2label: dict[int, str], source: str) -> str:
    """One line naming every class's weight (the first MAX_NAMED * 3 of them)."""
    shown = min(len(weights), MAX_NAMED * 3)
    pairs = ", ".join(f"{id2label.get(i, str(i))}: {weights[i]:.4g}" for i in range(shown))
    more = f", ... ({len(weights) - shown} more)" if len(weights) > shown else ""
    return f"class_weights ({source}): {pairs}{more}"


def counted_class_weights(data, id2label: dict[int, str]) -> torch.Tensor:
    """``class_weights=auto``: the balanced weights of the data's training label counts,
    printed (rank zero); a class the counts never hold is one warning."""
    if data is None or not hasattr(data, "label_counts"):
        raise ValueError(
            "class_weights=auto counts the labels of the training split of the attached data "
            f"module, and {type(data).__name__ if data is not None else 'this fit'} has no "
            "label_counts(); give class_weights as a list of one weight per class"
        )
    counts = data.label_counts()
    weights = balanced_weights(counts, id2label)
    absent = absent_classes(counts, id2label)
    if absent:
        rank_zero_warn(
            f"class_weights=auto: {len(absent)} classes never occur in the training labels "
            f"counted: {absent[:10]}; they get the largest weight, {float(weights.max()):.4g}"
        )
    rank_zero_info(weights_line(weights, id2label, "auto, from the training split's counts"))
    return weights


def counted_pos_weights(data, id2label: dict[int, str]) -> torch.Tensor:
    """Multi-label ``class_weights=auto``: negatives / positives per class of the data's training
    label sets (``train_label_sets()``), printed (rank zero); a class the labels never hold
    gets the largest weight of the others, with a warning."""
    if data is None or not hasattr(data, "train_label_sets"):
        raise ValueError(
            "class_weights=auto for multi-label counts the training split's label sets of the "
            f"attached data module, and {type(data).__name__ if data is not None else 'this fit'} "
            "has no train_label_sets(); give class_weights as a list of one pos_weight per class"
        )
    sets = torch.as_tensor(data.train_label_sets())
    sets = sets[(sets >= 0).all(1)].double()
    positives, total = sets.sum(0), len(sets)
    if len(positives) != len(id2label) or not positives.any():
        raise ValueError(
            f"class_weights=auto: the training split's {total} label sets hold "
            f"{int(positives.sum())} positives over {len(positives)} classes (the model has "
            f"{len(id2label)}); give class_weights as a list of one pos_weight per class"
        )
    present = positives > 0
    weights = torch.zeros_like(positives)
    weights[present] = (total - positives[present]) / positives[present]
    weights[~present] = weights[present].max()
    absent = absent_classes(positives.long().tolist(), id2label)
    if absent:
        rank_zero_warn(
            f"class_weights=auto: {len(absent)} classes never occur in the training label sets: "
            f"{absent[:10]}; they get the largest pos_weight, {float(weights.max()):.4g}"
        )
    weights = weights.float()
    rank_zero_info(weights_line(weights, id2label, "auto pos_weight, negatives / positives"))
    return weights
