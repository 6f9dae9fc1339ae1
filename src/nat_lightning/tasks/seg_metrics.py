"""Semantic segmentation metrics over a whole split, as mmsegmentation computes them.

Each metric accumulates counts (a confusion matrix, or per-class true positives) over every
batch of every rank and computes once at the epoch's end, so ``miou`` is the IoU of the split,
not a mean of per-batch values. Pixels labelled IGNORE_INDEX count nowhere.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchmetrics.wrappers import ClasswiseWrapper

IGNORE_INDEX = 255  # unlabelled pixels: padding, ADE20K's "other" after reduce_labels
SUPPORT = "pixels"  # the collection's key of the labelled pixels per class (not a logged value)


class ClassPixels(Metric):
    """Labelled pixels per class over a split, every rank's summed: which classes the labels
    hold (a class with none has no IoU) and whether any pixel was labelled at all."""

    full_state_update = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        labelled = target[target != IGNORE_INDEX]
        self.counts += torch.bincount(labelled.flatten(), minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        return self.counts


def segmentation_metrics(id2label: dict[int, str]) -> MetricCollection:
    """``miou``, ``pixel_acc`` and ``iou/<class name>`` for label maps ``(B, H, W)``.

    - ``miou``: intersection over union per class from the split's confusion matrix, averaged
      over the classes that occur in the labels or the predictions (a class absent from both
      has no IoU; mmseg's nanmean);
    - ``iou/<name>``: each class's IoU; NaN for a class absent from labels and predictions;
    - ``pixel_acc``: the share of labelled pixels predicted right;
    - ``pixels``: the labelled pixels of each class (K,), not a value to log: whether the split
      had any (without, ``miou`` is NaN) and which classes its labels never hold.

    Update with ``(predicted label maps, label maps)``, both integer ``(B, H, W)``. Arguments are
    not validated (a torch.unique per batch): HFSegmentationDataModule refuses masks with ids
    that are no class (MaskLabelError), and the loss, computed first, any that others pass.
    """
    n = len(id2label)
    names = [str(id2label.get(i, i)) for i in range(n)]
    common = {"num_classes": n, "ignore_index": IGNORE_INDEX, "validate_args": False}
    return MetricCollection(
        {
            "miou": MulticlassJaccardIndex(average="macro", **common),
            "pixel_acc": MulticlassAccuracy(average="micro", **common),
            "iou": ClasswiseWrapper(
                MulticlassJaccardIndex(average=None, zero_division=float("nan"), **common),
                labels=names,
                prefix="iou/",
            ),
            SUPPORT: ClassPixels(n),
        }
    )
