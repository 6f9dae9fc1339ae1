"""Semantic, instance and panoptic maps from a mask-classification head's two outputs, as
transformers' ``Mask2FormerImageProcessor`` and ``OneFormerImageProcessor`` post-process them.

The head (Mask2Former, OneFormer) gives per query a class distribution and a mask:

- ``class_logits`` (B, Q, K + 1): K classes, the last "no object";
- ``mask_logits`` (B, Q, h, w): mask logits, at 1/4 of the input.

The functions take these two tensors (``outputs.class_queries_logits`` and
``outputs.masks_queries_logits``) and give transformers' results, value for value, with three
differences on purpose:

- ``mask_size``: transformers' Mask2Former upsamples the masks to (384, 384) first, whatever the
  input size was; here that size is an argument (the input's size; None keeps the masks' own,
  which is what OneFormer's processor does). ``mask_size=(384, 384)`` reproduces Mask2Former's.
- Maps are int32 on the logits' device; transformers returns float32 for instance maps and for
  panoptic maps that hold no segment.
- Panoptic ids stay unique: transformers' ``compute_segments``, after a query of a fused class
  reuses that class's id, numbers the next new segment from the reused id, so two segments can
  share an id. Here a new segment always takes a new id; where transformers' ids are unique the
  results are equal.

The work is batched over queries (one host sync per image for ``segments_info``); images loop
in Python because each has its own target size.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TypedDict

import torch
import torch.nn.functional as F

Size = tuple[int, int]


class Segments(TypedDict):
    """One image's result. ``segmentation`` (H, W) int32 holds segment ids (see each function
    for the value of "no segment"); ``segments_info`` one dict per segment: ``id``, ``label_id``,
    ``was_fused`` and ``score`` (rounded to 6 places), transformers' keys; ``masks`` (N, H, W)
    bool, one per ``segments_info`` entry, only from the instance functions."""

    segmentation: torch.Tensor
    segments_info: list[dict]
    masks: torch.Tensor


def _sizes(target_sizes, batch: int) -> list[Size | None]:
    if target_sizes is None:
        return [None] * batch
    if isinstance(target_sizes, torch.Tensor):
        target_sizes = target_sizes.tolist()
    if len(target_sizes) != batch:
        raise ValueError(f"one target size per image: {len(target_sizes)=} but {batch=}")
    return [(int(h), int(w)) for h, w in target_sizes]


def _upsample(mask_logits: torch.Tensor, mask_size: Size | None) -> torch.Tensor:
    if mask_size is None:
        return mask_logits
    return F.interpolate(mask_logits, size=tuple(mask_size), mode="bilinear", align_corners=False)


def _resize(x: torch.Tensor, size: Size | None, antialias: bool) -> torch.Tensor:
    """(C, h, w) bilinearly to ``size``; ``antialias`` is torchvision's ``resize`` (OneFormer's)."""
    if size is None or tuple(x.shape[-2:]) == size:  # torchvision returns the same size as is
        return x
    return F.interpolate(
        x[None], size=size, mode="bilinear", align_corners=False, antialias=antialias
    )[0]


def semantic_segmentation(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    target_sizes: Sequence[Size] | torch.Tensor | None = None,
    mask_size: Size | None = None,
    antialias: bool = False,
) -> list[torch.Tensor]:
    """Class id maps: per pixel the class of most mass in sum_q p(class | q) * sigmoid(mask_q).

    Args:
        class_logits: (B, Q, K + 1).
        mask_logits: (B, Q, h, w).
        target_sizes: (height, width) per image to resize the class scores to; None keeps
            ``mask_size`` (or h, w).
        mask_size: size the mask logits are upsampled to first (see the module docstring).
        antialias: resize the scores as torchvision's resize does (OneFormer's processor with
            torchvision); without, as ``F.interpolate`` (Mask2Former's, OneFormer's PIL one).
    Returns:
        B maps (H, W) of int64 class ids.
    """
    probs = _upsample(mask_logits, mask_size).sigmoid()
    classes = class_logits.softmax(-1)[..., :-1]
    scores = torch.einsum("bqc,bqhw->bchw", classes, probs)  # (B, K, h, w)
    sizes = _sizes(target_sizes, len(scores))
    if all(size is None for size in sizes):
        return list(scores.argmax(1))
    return [_resize(s, size, antialias).argmax(0) for s, size in zip(scores, sizes)]


def _segments(
    probs: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    fuse: Collection[int],
    size: Size | None,
    antialias: bool,
) -> tuple[torch.Tensor, list[dict], list[int]]:
    """transformers' ``compute_segments`` over all queries at once: each pixel goes to the query
    of the highest score-weighted mask, and a query keeps its pixels where they are over
    ``overlap_mask_area_threshold`` of its own mask (weighted mask >= ``mask_threshold``).

    Returns the (H, W) int32 id map (0: no segment), ``segments_info`` and the kept queries.
    """
    probs = _resize(probs, size, antialias) * scores.view(-1, 1, 1)  # (N, H, W)
    owner = probs.argmax(0)  # (H, W): the first of equal maxima, as transformers'
    area = torch.bincount(owner.flatten(), minlength=len(probs))
    original = (probs >= mask_threshold).flatten(1).sum(1)
    # transformers compares the float32 ratio as a Python float: the threshold stays a double
    ratio = (area / original).double()
    valid = (area > 0) & (original > 0) & (ratio > overlap_mask_area_threshold)
    ids = torch.zeros(len(probs) + 1, dtype=torch.int32, device=probs.device)
    info, kept, memory, last = [], [], {}, 0
    valid_l, labels_l, scores_l = valid.tolist(), labels.tolist(), scores.tolist()
    for k in (k for k, v in enumerate(valid_l) if v):
        label = labels_l[k]
        if label in memory:
            segment = memory[label]
        else:
            last += 1
            segment = last
        if label in fuse:
            memory[label] = segment
        ids[k] = segment
        info.append(
            {
                "id": segment,
                "label_id": label,
                "was_fused": label in fuse,
                "score": round(scores_l[k], 6),
            }
        )
        kept.append(k)
    return ids[owner], info, kept


def _no_segment(size: Size, device: torch.device) -> Segments:
    return {"segmentation": torch.full(size, -1, dtype=torch.int32, device=device),
            "segments_info": []}  # fmt: skip


def panoptic_segmentation(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: Collection[int] = (),
    target_sizes: Sequence[Size] | torch.Tensor | None = None,
    mask_size: Size | None = None,
    antialias: bool = False,
) -> list[Segments]:
    """Panoptic maps, transformers' ``post_process_panoptic_segmentation``.

    Queries whose best class is "no object" or scores ``threshold`` or less are dropped; the
    rest compete per pixel. Each query of a class in ``label_ids_to_fuse`` (stuff) joins that
    class's first segment.

    Args:
        class_logits: (B, Q, K + 1).
        mask_logits: (B, Q, h, w).
        threshold: a query's class probability must be over this.
        mask_threshold: a query's own mask is where its weighted mask is at least this.
        overlap_mask_area_threshold: a query keeps the pixels it wins if they are over this
            share of its own mask.
        label_ids_to_fuse: classes with one segment per image (stuff).
        target_sizes: (height, width) per image; None keeps ``mask_size`` (or h, w).
        mask_size: size the mask logits are upsampled to first (see the module docstring).
        antialias: resize masks as torchvision does (True reproduces OneFormer's processor).
    Returns:
        Per image: ``segmentation`` of ids from 1, 0 where no segment won, all -1 when no query
        was kept; ``segments_info``.
    """
    probs = _upsample(mask_logits, mask_size).sigmoid()
    scores, labels = class_logits.softmax(-1).max(-1)  # (B, Q)
    keep = (labels != class_logits.shape[-1] - 1) & (scores > threshold)
    fuse = set(label_ids_to_fuse)
    results = []
    for i, size in enumerate(_sizes(target_sizes, len(probs))):
        if not keep[i].any():
            results.append(_no_segment(size or tuple(probs.shape[-2:]), probs.device))
            continue
        k = keep[i]
        seg, info, _ = _segments(
            probs[i][k], scores[i][k], labels[i][k], mask_threshold,
            overlap_mask_area_threshold, fuse, size, antialias,
        )  # fmt: skip
        results.append({"segmentation": seg, "segments_info": info})
    return results


def _top_queries(class_logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The Q best (query, class) pairs of each image: scores, classes, queries, each (B, Q)."""
    queries, classes = class_logits.shape[1], class_logits.shape[-1] - 1
    probs = class_logits.softmax(-1)[..., :-1].flatten(1)  # (B, Q * K)
    scores, top = probs.topk(queries, sorted=False)
    return scores, top % classes, torch.div(top, classes, rounding_mode="floor")


def instance_segmentation(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    threshold: float = 0.5,
    target_sizes: Sequence[Size] | torch.Tensor | None = None,
    mask_size: Size | None = None,
) -> list[Segments]:
    """Instances, Mask2Former's ``post_process_instance_segmentation``.

    The Q best (query, class) pairs of each image score p(class | query) times the mean mask
    probability inside the query's mask (logit > 0); those of score >= ``threshold`` whose
    mask, resized (nearest) to the target size, is not empty are instances. Masks may overlap.

    Args:
        class_logits: (B, Q, K + 1).
        mask_logits: (B, Q, h, w).
        threshold: the least instance score.
        target_sizes: (height, width) per image; None keeps ``mask_size`` (or h, w).
        mask_size: size the mask logits are upsampled to first (see the module docstring).
    Returns:
        Per image: ``segmentation`` of ids from 0, where a later instance overwrites an earlier
        one, -1 where none; ``segments_info``; ``masks`` (N, H, W) bool, overlaps kept (the
        input to mask AP; transformers' ``return_binary_maps``).
    """
    mask_logits = _upsample(mask_logits, mask_size)
    scores, classes, queries = _top_queries(class_logits)
    masks = torch.stack([m[q] for m, q in zip(mask_logits, queries)])  # (B, Q, h, w)
    binary = (masks > 0).float()
    inside = (masks.sigmoid().flatten(2) * binary.flatten(2)).sum(2)
    scores = scores * (inside / (binary.flatten(2).sum(2) + 1e-6))
    results = []
    for i, size in enumerate(_sizes(target_sizes, len(masks))):
        found = binary[i]
        if size is not None:
            found = F.interpolate(found[None], size=size, mode="nearest")[0]
        found = found.bool()
        kept = found.flatten(1).any(1) & (scores[i].double() >= threshold)
        results.append(_paint(found[kept], scores[i][kept], classes[i][kept]))
    return results


def _paint(masks: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor) -> Segments:
    """Instance ``i`` is id ``i``; a pixel takes the last instance that covers it, -1 if none."""
    if len(masks):
        last = len(masks) - 1 - masks.flip(0).to(torch.uint8).argmax(0)  # (H, W)
        seg = torch.where(masks.any(0), last, -1).to(torch.int32)
    else:
        seg = torch.full(masks.shape[1:], -1, dtype=torch.int32, device=masks.device)
    info = [
        {"id": i, "label_id": label, "was_fused": False, "score": round(score, 6)}
        for i, (label, score) in enumerate(zip(classes.tolist(), scores.tolist()))
    ]
    return {"segmentation": seg, "segments_info": info, "masks": masks}


def things_only(result: Segments, stuff_ids: Collection[int]) -> Segments:
    """An ``instance_segmentation`` result without its stuff classes' instances (a model trained
    on panoptic data also finds "instances" of stuff; COCO's instance results hold things),
    renumbered and repainted."""
    info = result["segments_info"]
    keep = [i for i, s in enumerate(info) if s["label_id"] not in set(stuff_ids)]
    if len(keep) == len(info):
        return result
    masks = result["masks"][keep]
    scores = torch.tensor([info[i]["score"] for i in keep], dtype=torch.double)
    classes = torch.tensor([info[i]["label_id"] for i in keep], dtype=torch.long)
    return _paint(masks, scores, classes)


def oneformer_instance_segmentation(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    threshold: float | None = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    thing_ids: Collection[int] | None = None,
    target_sizes: Sequence[Size] | torch.Tensor | None = None,
    antialias: bool = True,
) -> list[Segments]:
    """Instances, OneFormer's ``post_process_instance_segmentation``: the Q best (query, class)
    pairs of class probability over ``threshold`` (None keeps all: transformers'
    ``is_demo=False``), only those of ``thing_ids`` if given (its ``task_type="panoptic"``),
    then the panoptic competition of their mask logits (not probabilities, as transformers),
    unfused, so instances do not overlap. ``antialias`` as in ``panoptic_segmentation``
    (OneFormer's resizes with torchvision). transformers' ADE20K relabelling of
    ``is_demo=False`` is left out.

    Returns:
        Per image: ``segmentation`` of ids from 1, 0 where none won, all -1 when no pair was
        kept; ``segments_info``; ``masks`` (N, H, W) bool, one per ``segments_info`` entry.
    """
    scores, classes, queries = _top_queries(class_logits)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if threshold is not None:
        keep &= scores > threshold
    if thing_ids is not None:
        keep &= torch.isin(classes, torch.tensor(list(thing_ids), device=classes.device))
    results = []
    for i, size in enumerate(_sizes(target_sizes, len(scores))):
        k = keep[i]
        if not k.any():
            size = size or tuple(mask_logits.shape[-2:])
            none = torch.zeros(0, *size, dtype=torch.bool, device=mask_logits.device)
            results.append({**_no_segment(size, mask_logits.device), "masks": none})
            continue
        seg, info, _ = _segments(
            mask_logits[i][queries[i][k]], scores[i][k], classes[i][k], mask_threshold,
            overlap_mask_area_threshold, (), size, antialias,
        )  # fmt: skip
        ids = torch.tensor([s["id"] for s in info], dtype=seg.dtype, device=seg.device)
        results.append(
            {"segmentation": seg, "segments_info": info, "masks": seg == ids[:, None, None]}
        )
    return results
