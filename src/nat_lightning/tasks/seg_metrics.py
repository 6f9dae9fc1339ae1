"""Semantic segmentation metrics over a whole split, as mmsegmentation computes them.

Each metric accumulates counts (a confusion matrix, or per-class true positives) over every
batch of every rank and computes once at the epoch's end, so ``miou`` is the IoU of the split,
not a mean of per-batch values. Pixels labelled IGNORE_INDEX count nowhere.
"""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex
from torchmetrics.wrappers import ClasswiseWrapper

IGNORE_INDEX = 255  # unlabelled pixels: padding, ADE20K's "other" after reduce_labels


def segmentation_metrics(id2label: dict[int, str]) -> MetricCollection:
    """``miou``, ``pixel_acc`` and ``iou/<class name>`` for label maps ``(B, H, W)``.

    - ``miou``: intersection over union per class from the split's confusion matrix, averaged
      over the classes that occur in the labels or the predictions (a class absent from both
      has no IoU; mmseg's nanmean);
    - ``iou/<name>``: each class's IoU; NaN for a class absent from labels and predictions;
    - ``pixel_acc``: the share of labelled pixels predicted right.

    Update with ``(predicted label maps, label maps)``, both integer ``(B, H, W)``. Arguments are
    not validated (a torch.unique per batch): the loss, computed first, rejects labels out of
    range.
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
        }
    )
