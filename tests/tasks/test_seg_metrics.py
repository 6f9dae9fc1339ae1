import math

import numpy as np
import torch

from nat_lightning.tasks.seg_metrics import segmentation_metrics

NAMES = {0: "sky", 1: "road", 2: "car", 3: "boat"}


def numpy_reference(preds: np.ndarray, labels: np.ndarray, n: int):
    """mmseg's IoU: per class intersection/union over all pixels; mIoU the nanmean."""
    keep = labels != 255
    p, t = preds[keep], labels[keep]
    inter = np.array([np.sum((p == c) & (t == c)) for c in range(n)], dtype=float)
    union = np.array([np.sum((p == c) | (t == c)) for c in range(n)], dtype=float)
    with np.errstate(invalid="ignore"):
        iou = inter / union
    return iou, np.nanmean(iou), np.mean(p == t)


def hand_made_batches():
    """Three batches of 2 x 3 x 4 masks: 255 pixels, a class (boat) in no label and no
    prediction, and a class (car) predicted where it is not labelled."""
    labels = torch.tensor(
        [
            [[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 1, 1]],
            [[2, 2, 2, 0], [2, 2, 0, 0], [0, 0, 0, 0]],
            [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 255]],
            [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
            [[2, 0, 0, 0], [2, 0, 1, 1], [2, 255, 1, 1]],
            [[0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 2, 0]],
        ]
    )
    preds = labels.clone()
    preds[labels == 255] = 3  # ignored pixels: a boat predicted there counts nowhere
    preds[0, 0, 0], preds[1, 2, 3], preds[3, 1, :2], preds[4, 0, 0] = 1, 2, 2, 0
    preds[5, :, 2] = 1
    return preds, labels


def test_miou_over_the_split_equals_numpy_on_the_concatenation():
    preds, labels = hand_made_batches()
    metrics = segmentation_metrics(NAMES).clone(prefix="val/")
    for start in range(0, 6, 2):  # three batches of two
        metrics.update(preds[start : start + 2], labels[start : start + 2])
    got = metrics.compute()
    iou, miou, acc = numpy_reference(preds.numpy(), labels.numpy(), 4)
    assert math.isnan(iou[3]) and math.isnan(got["val/iou/boat"])  # absent everywhere
    for i, name in NAMES.items():
        if i != 3:
            assert abs(got[f"val/iou/{name}"].item() - iou[i]) < 1e-6
    assert abs(got["val/miou"].item() - miou) < 1e-6
    assert abs(got["val/pixel_acc"].item() - acc) < 1e-6
    # a mean of per-batch mIoUs is not the split's
    per_batch = [
        numpy_reference(preds[s : s + 2].numpy(), labels[s : s + 2].numpy(), 4)[1]
        for s in range(0, 6, 2)
    ]
    assert abs(np.mean(per_batch) - miou) > 1e-3


def test_reset_starts_a_new_split():
    preds, labels = hand_made_batches()
    metrics = segmentation_metrics(NAMES)
    metrics.update(1 - preds.clamp(max=1), labels)
    metrics.compute()
    metrics.reset()
    metrics.update(preds[:1], labels[:1])
    _, miou, _ = numpy_reference(preds[:1].numpy(), labels[:1].numpy(), 4)
    assert abs(metrics.compute()["miou"].item() - miou) < 1e-6
