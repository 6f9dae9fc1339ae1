"""Metrics of universal (mask-classification) segmentation over a split, every rank's batches
gathered by torchmetrics: panoptic quality, instance mask AP and semantic mIoU.

``UniversalMetrics.update(class_logits, mask_logits, semantic, panoptic, instances)`` takes the
head's outputs and the batch's ground truth:

- ``class_logits`` (B, Q, K + 1) and ``mask_logits`` (B, Q, h, w), the head's, at any h, w: the
  masks are resized to the ground truth's (H, W) (see ``tasks.universal_outputs``);
- ``semantic`` (B, H, W) long: class ids, 255 where unlabelled;
- ``panoptic`` (B, H, W, 2) long: (category_id, instance_id) per pixel; a category that is no
  class (255) is void: predictions there count nowhere (a predicted segment mostly on void is
  no false positive), as in panopticapi; a stuff class's instance_id is ignored;
- ``instances``: per image ``(masks, labels)``, ``masks`` (N, H, W) bool and ``labels`` (N,)
  long, the thing instances (N may be 0).

``compute()`` gives a flat dict of floats: ``{prefix}pq``, ``sq``, ``rq`` and each with
``_things``, ``_stuff`` (NaN where the split had no such segment); ``map``, ``map_50``,
``map_75`` (COCO's segm AP; -1 with no instance labelled at all, as COCO); ``miou``,
``pixel_acc`` and ``iou/<name>`` (``tasks.seg_metrics``, the UPerNet segmenter's).

torchmetrics' ``MeanAveragePrecision`` imports torchvision even for masks, and torchvision is not
a dependency, so mask AP is ``MaskAP`` here: COCO's evaluation (faster-coco-eval, else
pycocotools) over run-length-encoded masks kept as tensors, which torchmetrics gathers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
from collections.abc import Collection, Sequence
from typing import Literal

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.detection import PanopticQuality

from .seg_metrics import SUPPORT, segmentation_metrics
from .universal_outputs import instance_segmentation, panoptic_segmentation, semantic_segmentation

Backend = Literal["faster_coco_eval", "pycocotools"]


def default_backend() -> Backend:
    """faster-coco-eval where it is installed (the same numbers, faster), else pycocotools."""
    return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"


def _coco_tools(backend: Backend):
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
        from faster_coco_eval.core import mask as mask_utils
    else:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    return COCO, COCOeval, mask_utils


class PanopticQualityParts(PanopticQuality):
    """torchmetrics' PanopticQuality, computing ``pq``, ``sq``, ``rq`` over all classes, the
    things and the stuff at once (each the mean over the classes with a segment, as its own).

    ``unassigned``: the category of predicted pixels no segment won. torchmetrics treats a void
    prediction like void truth: a ground-truth segment mostly predicted void is no false
    negative, and void predictions leave the union. panopticapi (COCO's PQ) has neither: every
    unmatched segment of the truth is a false negative. A category of its own for unassigned
    pixels (a stuff class that no truth holds, left out of the means) gives panopticapi's.
    """

    def __init__(self, things: Collection[int], stuffs: Collection[int], unassigned: int, **kwargs):
        super().__init__(things, [*stuffs, unassigned], **kwargs)
        self.unassigned = unassigned

    def compute(self) -> dict[str, torch.Tensor]:
        tp, iou = self.true_positives.double(), self.iou_sum
        seen = tp + 0.5 * self.false_positives + 0.5 * self.false_negatives
        sq = torch.where(tp > 0, iou / tp.clamp(min=1), 0.0)
        rq = torch.where(seen > 0, tp / seen.clamp(min=1e-9), 0.0)
        index = torch.arange(len(seen), device=seen.device)
        thing = index < len(self.things)  # torchmetrics orders things, then stuff, each sorted
        counted = (seen > 0) & (index != self.cat_id_to_continuous_id[self.unassigned])
        out = {}
        for suffix, part in (("", torch.ones_like(thing)), ("_things", thing), ("_stuff", ~thing)):
            for name, value in (("pq", sq * rq), ("sq", sq), ("rq", rq)):
                out[name + suffix] = value[part & counted].mean()  # NaN with no class
        return out


def _cat(state: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A "cat" state on the CPU: a list before the first gather, a tensor after."""
    if isinstance(state, list):
        state = torch.cat(state) if state else torch.zeros(0, dtype=torch.long)
    return state.cpu()


def _encode(masks: torch.Tensor, mask_utils) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) bool to COCO's compressed RLE strings: their bytes joined, and their lengths."""
    if not len(masks):
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    array = np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    counts = [rle["counts"] for rle in mask_utils.encode(array)]
    joined = torch.frombuffer(bytearray(b"".join(counts)), dtype=torch.uint8)
    return joined, torch.tensor([len(c) for c in counts])


class MaskAP(Metric):
    """COCO instance-segmentation AP: ``map`` (IoU 0.5:0.95), ``map_50``, ``map_75``, the mean
    over the classes present in labels or predictions, at most 100 detections per image.

    Update with per image ``(masks (N, H, W) bool, scores (N,), labels (N,))`` and ``(masks,
    labels)``. Every image counts, one without labelled instances too (its detections are false
    positives, as in COCO). States are tensors ("cat"), so DDP gathers them exactly.
    """

    full_state_update = False
    STATES = ("sizes", "pred_n", "pred_rle", "pred_len", "pred_scores", "pred_labels",
              "gt_n", "gt_rle", "gt_len", "gt_labels")  # fmt: skip

    def __init__(self, backend: Backend | None = None, **kwargs):
        super().__init__(**kwargs)
        self.backend = backend or default_backend()
        self._coco = _coco_tools(self.backend)
        for name in self.STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        preds: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        target: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        if len(preds) != len(target):
            raise ValueError(f"one prediction per image: {len(preds)=} but {len(target)=}")
        mask_utils = self._coco[2]
        for (masks, scores, labels), (gt_masks, gt_labels) in zip(preds, target):
            device = scores.device
            self.sizes.append(torch.tensor([gt_masks.shape[-2:]], device=device))
            for side, m, lab in (("pred", masks, labels), ("gt", gt_masks, gt_labels)):
                rle, lengths = _encode(m, mask_utils)
                getattr(self, f"{side}_n").append(torch.tensor([len(m)], device=device))
                getattr(self, f"{side}_rle").append(rle.to(device))
                getattr(self, f"{side}_len").append(lengths.to(device))
                getattr(self, f"{side}_labels").append(lab.long().to(device))
            self.pred_scores.append(scores.double())

    def _annotations(self, side: str, sizes: list) -> list[dict]:
        state = {n: _cat(getattr(self, f"{side}_{n}")) for n in ("n", "rle", "len", "labels")}
        if side == "pred":
            scores = _cat(self.pred_scores).tolist()
        raw, lengths = state["rle"].numpy().tobytes(), state["len"].tolist()
        ends = np.cumsum(lengths).tolist()
        images = [i for i, n in enumerate(state["n"].tolist()) for _ in range(n)]
        anns = []
        for k, (image, label) in enumerate(zip(images, state["labels"].tolist())):
            rle = {"size": sizes[image], "counts": raw[ends[k] - lengths[k] : ends[k]]}
            ann = {"id": k + 1, "image_id": image, "category_id": label, "segmentation": rle}
            ann.update(area=float(self._coco[2].area(rle)), iscrowd=0, bbox=[0, 0, 0, 0])
            if side == "pred":
                ann["score"] = scores[k]
            anns.append(ann)
        return anns

    def compute(self) -> dict[str, torch.Tensor]:
        coco, cocoeval, _ = self._coco
        sizes = _cat(self.sizes).tolist()
        gts, dts = self._annotations("gt", sizes), self._annotations("pred", sizes)
        out = dict.fromkeys(("map", "map_50", "map_75"), torch.tensor(-1.0))
        if not gts:
            return out  # COCO's -1: no instance to find
        images = [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate(sizes)]
        cats = [{"id": c} for c in sorted({a["category_id"] for a in gts + dts})]
        ground, found = coco(), coco()
        ground.dataset = {"images": images, "annotations": gts, "categories": cats}
        found.dataset = {"images": images, "annotations": dts, "categories": cats}
        with contextlib.redirect_stdout(io.StringIO()):  # COCO prints its progress
            ground.createIndex()
            found.createIndex()
            evaluation = cocoeval(ground, found, iouType="segm")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = torch.tensor(evaluation.stats[:3], dtype=torch.float)
        return dict(zip(out, stats))


def _panoptic_pairs(results, unassigned: int) -> torch.Tensor:
    """Post-processed panoptic results to (B, H, W, 2) (category_id, instance_id); pixels of no
    segment (and images of none) get the ``unassigned`` category."""
    pairs = []
    for result in results:
        seg = result["segmentation"].long()
        info = result["segments_info"]
        size = int(max([0, *(s["id"] for s in info)])) + 2  # ids from 1; -1 and 0: none
        category = torch.full((size,), unassigned, dtype=torch.long, device=seg.device)
        for s in info:
            category[s["id"]] = s["label_id"]
        pairs.append(torch.stack([category[seg.clamp(min=0)], seg.clamp(min=0)], -1))
    return torch.stack(pairs)


class UniversalMetrics(torch.nn.Module):
    """PQ, mask AP and mIoU of a mask-classification head over a split (see the module doc).

    Args:
        id2label: class names by id, 0..K-1 (the mIoU's ``iou/<name>`` keys).
        stuff_ids: the stuff classes (fused in panoptic maps); the others are things.
        prefix: put before every key, e.g. ``val/``.
        threshold: least class probability of a panoptic segment (transformers' default 0.5;
            detectron2's Mask2Former 0.8).
        instance_threshold: least instance score kept for AP (COCO ranks all: 0.0).
        overlap_mask_area_threshold: as in ``universal_outputs.panoptic_segmentation``.
        backend: COCO evaluation for mask AP; None picks ``default_backend()``.
    """

    def __init__(
        self,
        id2label: dict[int, str],
        stuff_ids: Collection[int] = (),
        prefix: str = "val/",
        threshold: float = 0.5,
        instance_threshold: float = 0.0,
        overlap_mask_area_threshold: float = 0.8,
        backend: Backend | None = None,
    ):
        super().__init__()
        classes = set(range(len(id2label)))
        if not set(stuff_ids) <= classes:
            raise ValueError(f"stuff_ids must be class ids 0..{len(id2label) - 1}: {stuff_ids=}")
        self.prefix, self.stuff_ids = prefix, sorted(stuff_ids)
        self.threshold, self.instance_threshold = threshold, instance_threshold
        self.overlap_mask_area_threshold = overlap_mask_area_threshold
        things = sorted(classes - set(stuff_ids))
        self.unassigned = len(id2label)  # the truth's void (255, any non-class) becomes 1 + this
        self.semantic = segmentation_metrics(id2label)
        self.panoptic = PanopticQualityParts(things, self.stuff_ids, self.unassigned)
        self.instance = MaskAP(backend)

    def update(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        semantic: torch.Tensor,
        panoptic: torch.Tensor,
        instances: Sequence[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Update every metric with a batch; returns its semantic maps (B, H, W), the class
        per pixel, computed here once for the caller (pictures)."""
        size = tuple(semantic.shape[-2:])
        class_logits, mask_logits = class_logits.detach(), mask_logits.detach()
        sizes = [size] * len(semantic)
        maps = torch.stack(semantic_segmentation(class_logits, mask_logits, sizes))
        self.semantic.update(maps, semantic)
        results = panoptic_segmentation(
            class_logits, mask_logits, self.threshold,
            overlap_mask_area_threshold=self.overlap_mask_area_threshold,
            label_ids_to_fuse=self.stuff_ids, target_sizes=sizes,
        )  # fmt: skip
        category = panoptic[..., 0]
        void = (category < 0) | (category >= self.unassigned)  # not a class: to torchmetrics' void
        truth = torch.stack([category.masked_fill(void, self.unassigned + 1), panoptic[..., 1]], -1)
        self.panoptic.update(_panoptic_pairs(results, self.unassigned), truth)
        found = instance_segmentation(class_logits, mask_logits, self.instance_threshold, sizes)
        self.instance.update([self._things(r) for r in found], instances)
        return maps

    def _things(self, result) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """An instance result's (masks, scores, labels) of thing classes (AP is over things)."""
        device, info = result["masks"].device, result["segments_info"]
        scores = torch.tensor([s["score"] for s in info], dtype=torch.double, device=device)
        labels = torch.tensor([s["label_id"] for s in info], dtype=torch.long, device=device)
        thing = ~torch.isin(labels, torch.tensor(self.stuff_ids, dtype=torch.long, device=device))
        return result["masks"][thing], scores[thing], labels[thing]

    def compute(self) -> dict[str, float]:
        values = {**self.semantic.compute(), **self.panoptic.compute(), **self.instance.compute()}
        values.pop(SUPPORT)
        return {f"{self.prefix}{k}": float(v) for k, v in values.items()}

    def reset(self) -> None:
        for metric in (self.semantic, self.panoptic, self.instance):
            metric.reset()
