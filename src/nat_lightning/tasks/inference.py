"""Inference as pure functions of a ``forward``: for segmentation (images -> logits at their
size) whole image, sliding window, and test-time augmentation over scales and horizontal flips;
for classification (images -> (B, K) logits) test-time augmentation over flips and crops."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, h, w) -> (B, K, h, w) logits


def slide_logits(
    forward: Forward, images: torch.Tensor, crop_size: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """mmseg's ``slide_inference``: logits of ``crop_size`` windows ``stride`` apart, averaged
    where they overlap.

    Windows start every ``stride`` pixels; the last one of a row (column) is moved back to end at
    the image's edge, and a side shorter than the crop is one window of the whole side. Every
    pixel is covered at least once (stride <= crop size).

    Args:
        forward: the network, images to logits of the same height and width.
        images: (B, 3, H, W).
        crop_size: window (height, width).
        stride: steps (vertical, horizontal) between windows.
    Returns:
        (B, K, H, W) logits.
    """
    (crop_h, crop_w), (step_h, step_w) = crop_size, stride
    if not (0 < step_h <= crop_h and 0 < step_w <= crop_w):
        raise ValueError(
            f"sliding windows need 0 < stride <= crop_size on both sides (else pixels go "
            f"unseen), got {stride=} and {crop_size=}"
        )
    height, width = images.shape[-2:]
    rows = max(height - crop_h + step_h - 1, 0) // step_h + 1
    cols = max(width - crop_w + step_w - 1, 0) // step_w + 1
    total, count = None, images.new_zeros(1, 1, height, width, dtype=torch.float32)
    for r in range(rows):
        for c in range(cols):
            bottom, right = min(r * step_h + crop_h, height), min(c * step_w + crop_w, width)
            top, left = max(bottom - crop_h, 0), max(right - crop_w, 0)
            logits = forward(images[:, :, top:bottom, left:right]).float()
            if total is None:
                total = logits.new_zeros(len(images), logits.shape[1], height, width)
            total[:, :, top:bottom, left:right] += logits
            count[:, :, top:bottom, left:right] += 1
    return total / count


def window_count(size: tuple[int, int], crop_size: tuple[int, int], stride: tuple[int, int]) -> int:
    """How many windows ``slide_logits`` runs on an image of ``size`` (height, width)."""
    return (max(size[0] - crop_size[0] + stride[0] - 1, 0) // stride[0] + 1) * (
        max(size[1] - crop_size[1] + stride[1] - 1, 0) // stride[1] + 1
    )


def tta_scores(
    infer: Forward, images: torch.Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> torch.Tensor:
    """Scores of ``infer`` (whole-image or sliding-window logits) over test-time augmentations.

    One view (scales ``[1.0]``, no flip): the logits themselves. Several views (each scale, and
    each mirrored when ``flip``): the log of the mean of their softmax probabilities, as mmseg's
    ``aug_test`` averages probabilities. Each view's images are resized bilinearly to ``scale``
    times the input and its logits back to the input size (and un-mirrored) before averaging.
    Either way ``argmax`` over dim 1 gives the label map and cross-entropy on them is the loss.

    Args:
        infer: images (B, 3, h, w) -> logits (B, K, h, w).
        images: (B, 3, H, W).
        scales: resize factors of the views.
        flip: add the horizontal mirror of every scale.
    Returns:
        (B, K, H, W) float scores.
    """
    size = images.shape[-2:]
    views = [(s, f) for s in scales for f in ((False, True) if flip else (False,))]
    if not views or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive factors, at least one, got {list(scales)=}")
    if len(views) == 1 and views[0] == (1.0, False):
        return infer(images).float()
    total = None
    for scale, mirrored in views:
        x = images if scale == 1.0 else _resize(images, [round(n * scale) for n in size])
        logits = infer(x.flip(-1) if mirrored else x).float()
        logits = logits.flip(-1) if mirrored else logits
        probs = (logits if scale == 1.0 else _resize(logits, size)).softmax(1)
        total = probs if total is None else total + probs
    return _log_mean(total, len(views))


CORNER_CROP = 0.875  # side of classification's corner crops, as a fraction of the image's


def crop_views(images: torch.Tensor, crops: int) -> list[torch.Tensor]:
    """The views of multi-crop classification: the images themselves (``crops`` 1), and with
    ``crops`` 5 also their four corner crops of CORNER_CROP of each side, each resized
    (bilinearly) back to the images' size. The images are the data's centre crops already."""
    check_crops(crops)
    if crops == 1:
        return [images]
    height, width = images.shape[-2:]
    ch, cw = round(height * CORNER_CROP), round(width * CORNER_CROP)
    corners = ((0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw))
    return [images] + [
        _resize(images[..., top : top + ch, left : left + cw], (height, width))
        for top, left in corners
    ]


def check_crops(crops: int) -> None:
    """A ValueError for a number of classification views that crop_views does not make."""
    if crops not in (1, 5):
        raise ValueError(f"tta_crops={crops}: expected 1 (the image) or 5 (and its 4 corners)")


def classification_scores(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    flip: bool = False,
    crops: int = 1,
    multi_label: bool = False,
) -> torch.Tensor:
    """Class scores (B, K) of ``forward`` over test-time augmentations: the logits of one view
    (no flip, one crop), else the log of the mean softmax of the views (``crop_views``, each also
    mirrored when ``flip``), as tta_scores does for segmentation; argmax, top-k and softmax of
    either are the prediction, and cross-entropy on them the loss. ``multi_label``: the logit of
    the views' mean sigmoid instead, so that sigmoid and binary cross-entropy apply alike."""
    views = crop_views(images, crops)
    if flip:
        views += [view.flip(-1) for view in views]
    if len(views) == 1:
        return forward(images).float()
    if multi_label:
        mean = sum(forward(view).float().sigmoid() for view in views) / len(views)
        eps = torch.finfo(torch.float32).eps
        return torch.logit(mean, eps=eps)
    total = sum(forward(view).float().softmax(-1) for view in views)
    return _log_mean(total, len(views))


def _log_mean(total: torch.Tensor, count: int) -> torch.Tensor:
    """The log of a mean of probabilities, finite where the mean is 0."""
    return (total / count).clamp_min(torch.finfo(torch.float32).tiny).log()


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
