"""Multi-label classification: a set of classes per image, one sigmoid per class.

The pieces NatClassifier uses when its ``multi_label`` is on (data whose label column holds a list
per image turns it on; see data.columns):

- targets: (B, K) 0/1 rows (a single-label batch's class ids become one-class rows); a row of
  IGNORE_LABEL is padding and counts nowhere;
- the loss: ``BCEWithLogitsLoss`` averaged over the labelled rows' K entries, with ``pos_weight``
  (the task's ``class_weights``: ``auto`` is negatives / positives per class of the training
  split, PyTorch's recipe for BCEWithLogitsLoss);
- label smoothing per class, y (1 - s) + s / 2 (each class is its own two-way problem), before
  mixup/cutmix mixes the rows as they mix images;
- metrics, torchmetrics' multilabel ones (exact under DDP, gathered at ``compute``): ``map``
  (the mean average precision over the classes the split's labels hold: torchmetrics' macro
  average would count a class without positives as AP 0), ``f1_micro``, ``f1_macro`` at
  ``threshold``, and per-class AP ``ap_class/<name>``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score

from ..batch import IGNORE_LABEL

MONITOR = "val/map"
CHECKPOINT_FILENAME = "epoch{epoch:03d}-map{val/map:.4f}"


def label_rows(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K) 0/1 rows: multi-label rows as they are, class ids (B,) as one-class rows
    (IGNORE_LABEL ids as IGNORE_LABEL rows)."""
    if labels.dim() == 2:
        return labels
    rows = F.one_hot(labels.clamp(min=0), num_classes)
    return torch.where((labels == IGNORE_LABEL)[:, None], IGNORE_LABEL, rows)


def labelled(rows: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the rows that are examples, not padding."""
    return (rows != IGNORE_LABEL).all(-1)


def smoothed(rows: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Float targets y (1 - s) + s / 2 of the labelled rows; padding rows all 0."""
    targets = rows.clamp(min=0).float() * (1 - smoothing) + smoothing / 2
    return targets * labelled(rows)[:, None]


def multi_label_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy with logits against (soft) ``targets`` (B, K), averaged over the K
    entries of the labelled ``rows``; 0 (with a graph) for a batch of padding only.
    ``pos_weight`` (K,) weighs each class's positive term, as BCEWithLogitsLoss does."""
    per_entry = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), pos_weight=pos_weight, reduction="none"
    )
    keep = labelled(rows)
    return (per_entry * keep[:, None]).sum() / (keep.sum() * logits.shape[-1]).clamp(min=1)


class ClassPositives(Metric):
    """Labelled rows holding each class over a split, every rank's summed: which classes have an
    average precision (a class without a positive has none)."""

    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.counts += target[labelled(target)].clamp(min=0).sum(0)

    def compute(self) -> torch.Tensor:
        return self.counts


def stage_metrics(num_classes: int, threshold: float) -> dict[str, Metric]:
    """The val/test metrics: ``loss``, ``f1_micro``, ``f1_macro`` (logged as they go) and the
    per-class AP and positives that ``epoch_values`` turns into ``map`` and ``ap_class/*``."""
    common = {"num_labels": num_classes, "ignore_index": IGNORE_LABEL}
    return {
        "loss": MeanMetric(),
        "f1_micro": MultilabelF1Score(threshold=threshold, average="micro", **common),
        "f1_macro": MultilabelF1Score(threshold=threshold, average="macro", **common),
        "ap": MultilabelAveragePrecision(average=None, **common),
        "positives": ClassPositives(num_classes),
    }


EPOCH_METRICS = ("ap", "positives")  # computed in epoch_values, not logged batch by batch


def epoch_values(metrics, names: list[str], per_class: bool) -> dict[str, torch.Tensor]:
    """``map``: the mean AP over the classes the split's labels hold (NaN when none does);
    with ``per_class`` each class's ``ap_class/<name>`` (NaN for a class without positives).
    ``compute()`` gathers every rank's state: every rank calls this. Resets both metrics."""
    ap, positives = metrics["ap"].compute(), metrics["positives"].compute()
    ap = torch.where(positives > 0, ap.float(), torch.nan)
    held = positives > 0
    values = {"map": ap[held].mean() if held.any() else torch.tensor(torch.nan)}
    if per_class:
        values.update({f"ap_class/{name}": ap[i] for i, name in enumerate(names)})
    metrics["ap"].reset()
    metrics["positives"].reset()
    return values


def training_metric(num_classes: int, threshold: float) -> Metric:
    """``train/f1_micro``: this rank's own (computed without a collective, as train/acc1)."""
    return MultilabelF1Score(
        num_classes,
        threshold=threshold,
        average="micro",
        ignore_index=IGNORE_LABEL,
        sync_on_compute=False,
    )


def predicted_sets(
    probs: torch.Tensor, threshold: float, id2label: dict[int, str]
) -> tuple[list[list[int]], list[list[str]], list[list[float]]]:
    """Per image, the classes whose probability is at least ``threshold``, most probable first:
    (ids, names, probabilities)."""
    ids, names, values = [], [], []
    for row in probs.float().cpu():
        order = [i for i in row.argsort(descending=True).tolist() if row[i] >= threshold]
        ids.append(order)
        names.append([id2label.get(i, str(i)) for i in order])
        values.append([round(float(row[i]), 6) for i in order])
    return ids, names, values
