"""Panoptic annotations: from a stored annotation to segments, and segments to the targets of
Mask2Former/OneFormer and of the panoptic, instance and semantic metrics.

Three kinds of annotation are read, each into the same form, ``Segments``: an (H, W) index map
(0: void, k: segment k) and, per segment, its class and whether it is a crowd region.

- ``panoptic`` (COCO-panoptic): an RGB PNG of segment ids (id = R + 256 G + 256^2 B, 0 void) and
  ``segments_info``, a list of {id, category_id, iscrowd}.
- ``instance``: an instance-id map (an "L" or 16-bit PNG, 0 no instance) and a list of classes,
  the class of instance id k at position k - 1 (ids listed but absent are no segment).
- ``semantic``: a map of class ids (IGNORE_PIXEL ignored); each class present is one segment.

An inconsistent annotation (a listed segment id missing from the PNG, an id in the PNG that no
segment lists, a category outside the classes, an annotation of another size than its image)
raises AnnotationError; the decoder turns it into an ``Undecodable`` named after the file or row
and the reason, which the batch counts and SkippedImagesReport reports, so the matcher never
sees it.

Training targets leave crowd segments out (Mask2Former's recipe): their pixels belong to no
mask. The evaluation panoptic map marks them void; the semantic map keeps their class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from ..batch import IGNORE_PIXEL, VOID_SEGMENT
from .images import Undecodable, bookkeeping, decode_image, decoded, padding_pixels, stored_path
from .joint_transforms import finish, photometric_distortion
from .masks import read_mask, reduce_labels
from .transforms import reseed

KINDS = ("panoptic", "instance", "semantic")
PAD_DIVISOR = 32  # evaluation sizes divide by NAT's total stride


class AnnotationError(ValueError):
    """An annotation that decodes but contradicts itself or the classes."""


@dataclass(frozen=True)
class Segments:
    index: np.ndarray  # (H, W) int32: 0 void, k the k-th segment (1-based)
    classes: np.ndarray  # (N,) int64, segment k's class at k - 1
    crowd: np.ndarray  # (N,) bool


def no_segments(shape: tuple[int, int]) -> Segments:
    """An unlabelled image: every pixel void, no segment."""
    empty = np.zeros(0, dtype=np.int64)
    return Segments(np.zeros(shape, dtype=np.int32), empty, empty.astype(bool))


def rgb_ids(rgb: np.ndarray) -> np.ndarray:
    """COCO-panoptic's (H, W, 3) uint8 colours as (H, W) int64 ids: R + 256 G + 256^2 B."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def check_classes(classes: np.ndarray, num_classes: int, what: str) -> None:
    outside = sorted({int(c) for c in classes if not 0 <= c < num_classes})
    if outside:
        raise AnnotationError(
            f"{what} {outside} outside the {num_classes} classes (0..{num_classes - 1})"
        )


def indexed(ids: np.ndarray, listed: np.ndarray) -> np.ndarray:
    """(H, W) ids as 1-based positions in ``listed`` (0 where the id is 0); every id must be
    listed."""
    lookup = np.argsort(listed, kind="stable")
    position = np.searchsorted(listed, ids, sorter=lookup)
    position = np.minimum(position, max(len(listed) - 1, 0))
    index = np.zeros(ids.shape, dtype=np.int32)
    if len(listed):
        index = (lookup[position] + 1).astype(np.int32)
    return np.where(ids == 0, 0, index).astype(np.int32)


def panoptic_segments(
    rgb: np.ndarray, segments_info: Sequence[Mapping[str, Any]], num_classes: int
) -> Segments:
    """COCO-panoptic: an (H, W, 3) id PNG and its segments_info."""
    ids = rgb_ids(rgb)
    listed = np.array([int(s["id"]) for s in segments_info], dtype=np.int64)
    classes = np.array([int(s["category_id"]) for s in segments_info], dtype=np.int64)
    crowd = np.array([bool(s.get("iscrowd", 0)) for s in segments_info], dtype=bool)
    if len(set(listed.tolist())) != len(listed) or (listed == 0).any():
        raise AnnotationError(f"segments_info ids {listed.tolist()} repeat one or hold 0 (void)")
    check_classes(classes, num_classes, "segments_info category_id")
    present = np.unique(ids)
    present = present[present != 0]
    unlisted = np.setdiff1d(present, listed)
    if len(unlisted):
        raise AnnotationError(f"PNG segment ids {unlisted[:8].tolist()} not in segments_info")
    missing = np.setdiff1d(listed, present)
    if len(missing):
        raise AnnotationError(f"segments_info ids {missing[:8].tolist()} missing from the PNG")
    return Segments(indexed(ids, listed), classes, crowd)


def instance_segments(ids: np.ndarray, classes: Sequence[int], num_classes: int) -> Segments:
    """An instance-id map (0: no instance) and the class of instance id k at ``classes[k - 1]``."""
    classes = np.asarray([int(c) for c in classes], dtype=np.int64)
    check_classes(classes, num_classes, "instance classes")
    largest = int(ids.max(initial=0))
    if largest > len(classes):
        raise AnnotationError(
            f"instance id {largest} in the map, but only {len(classes)} instance classes listed"
        )
    crowd = np.zeros(len(classes), dtype=bool)
    return Segments(ids.astype(np.int32), classes, crowd)


def semantic_segments(ids: np.ndarray, num_classes: int) -> Segments:
    """A class-id map: each class present is one segment; IGNORE_PIXEL is void."""
    present = np.unique(ids)
    present = present[present != IGNORE_PIXEL].astype(np.int64)
    check_classes(present, num_classes, "class ids")
    lookup = np.zeros(max(int(ids.max(initial=0)) + 1, IGNORE_PIXEL + 1), dtype=np.int32)
    lookup[present] = np.arange(1, len(present) + 1)
    crowd = np.zeros(len(present), dtype=bool)
    return Segments(lookup[ids], present, crowd)


def read_segments(
    kind: str, value: Any, listed: Any, num_classes: int, where: str, reduce: bool = False
) -> Segments | None:
    """The stored annotation ``value`` (bytes or a path) of ``kind``, with ``listed`` (its
    segments_info or instance classes); None when it cannot be decoded. ``reduce``: a semantic
    map's ids through ``masks.reduce_labels`` first."""
    if kind == "panoptic":
        rgb = decoded(value, lambda image: np.asarray(image.convert("RGB")))
        if rgb is None:
            return None
        return panoptic_segments(rgb, listed or [], num_classes)
    ids = read_mask(value, None, where)
    if ids is None:
        return None
    if kind == "instance":
        return instance_segments(ids[0], listed or [], num_classes)
    return semantic_segments(reduce_labels(ids[0]) if reduce else ids[0], num_classes)


def targets(index: np.ndarray, segments: Segments) -> dict[str, torch.Tensor]:
    """A transformed (H, W) index map as the model's and the metrics' targets:
    ``mask_labels`` (N, H, W) float32 and ``class_labels`` (N,) int64 of the segments still
    visible, crowd left out; ``panoptic_map`` (H, W, 2) int64 of (class, segment), VOID_SEGMENT
    in both for void and crowd; ``labels``, the semantic map, (H, W) int64, IGNORE_PIXEL for
    void."""
    index = torch.as_tensor(np.ascontiguousarray(np.asarray(index))).long()
    n = len(segments.classes)
    classes = torch.as_tensor(segments.classes, dtype=torch.int64)
    crowd = torch.as_tensor(segments.crowd, dtype=torch.bool)
    # position 0: void
    category = torch.cat([torch.tensor([VOID_SEGMENT]), classes])
    semantic = torch.cat([torch.tensor([IGNORE_PIXEL]), classes])[index]
    instance = torch.arange(n + 1)
    instance[0] = VOID_SEGMENT
    category_shown = category.clone()
    category_shown[1:][crowd] = VOID_SEGMENT
    instance[1:][crowd] = VOID_SEGMENT
    panoptic = torch.stack([category_shown[index], instance[index]], dim=-1)
    area = torch.bincount(index.flatten(), minlength=n + 1)[1:]
    kept = torch.nonzero((area > 0) & ~crowd).flatten()
    masks = index[None] == (kept + 1)[:, None, None]
    return {
        "mask_labels": masks.float(),
        "class_labels": classes[kept],
        "panoptic_map": panoptic,
        "labels": semantic,
    }


def annotation_name(value: Any, image_value: Any, column: str, index: int | None, rows) -> str:
    """How a skipped example's annotation is named: its file, else its image's file, else its
    row (of ``rows``, e.g. ``split 'train'``)."""
    row = None if index is None else f"row {index}" + (f" of {rows}" if rows else "")
    if path := stored_path(value):
        return f"file {path!r}" + (f" ({row})" if row else "")
    if path := stored_path(image_value):
        return f"{column!r} of the image file {path!r}"
    return f"{column!r} of {row or 'a streamed row'}"


@dataclass(frozen=True)
class PanopticColumns:
    image: str
    annotation: str | None  # None: unlabelled data (predict_paths)
    segments: str | None  # segments_info (panoptic) or instance classes (instance); else None
    kind: str  # one of KINDS
    names: tuple[str, ...]  # class names by id
    reduce_labels: bool = False  # semantic maps: ADE20K's 0 = "other" (ignored), the rest - 1


# -- joint pipelines: the index map moves with the image, nearest neighbours, padded void ------


def pad_void(min_size: int | None = None, divisor: int | None = None) -> A.PadIfNeeded:
    """Pad bottom and right, the image with 0 and the index map with 0 (void), to at least
    ``min_size`` per side or to multiples of ``divisor``."""
    return A.PadIfNeeded(
        min_height=min_size,
        min_width=min_size,
        pad_height_divisor=divisor,
        pad_width_divisor=divisor,
        position="top_left",
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=0,
    )


def train_pipeline(
    crop_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scale_range: tuple[float, float] = (0.1, 2.0),
    hflip: float = 0.5,
    photometric: bool = False,
) -> A.Compose:
    """Mask2Former's large-scale jitter: the longer side to ``crop_size`` times a ratio drawn
    from ``scale_range`` (bilinear image, nearest index map), pad to the crop (void), a random
    crop of ``crop_size``, flip, optional photometric distortion (image only), normalise."""
    low, high = (max(1, round(crop_size * s)) for s in scale_range)
    steps = [
        # a list of sizes: one drawn per call, so the ratio is uniform in scale_range
        A.LongestMaxSize(
            max_size=list(range(low, high + 1)),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
        ),
        pad_void(min_size=crop_size),
        A.RandomCrop(crop_size, crop_size),
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if photometric:
        steps += photometric_distortion()
    return A.Compose(steps + finish(mean, std))


def eval_finish(mean: tuple[float, ...], std: tuple[float, ...]) -> A.Compose:
    """Pad bottom and right to multiples of PAD_DIVISOR (image 0, index map void), normalise."""
    return A.Compose([pad_void(divisor=PAD_DIVISOR), *finish(mean, std)])


# -- decoding and batching ---------------------------------------------------------------------


class PanopticDecoder:
    """A row -> ``{"pixel_values": (3, H, W) float32, "mask_labels", "class_labels",
    "panoptic_map", "labels"}`` (see ``targets``), plus ``"sizes"`` and ``"content"`` in
    evaluation (as PairDecoder's) and ``"ids"`` when it has one; or an ``Undecodable`` when the
    image or the annotation cannot be decoded or is inconsistent (AnnotationError; its name then
    says why).

    Training runs ``pipeline`` (random: reseeded from torch per example); evaluation runs
    ``pipeline`` (the resize), notes the content size, then ``finish`` (pad, normalise). A row
    without an annotation (unlabelled data) has no segment. ``rows``: what a row index counts
    in, e.g. ``split 'train'``, for names. A plain picklable object, so workers receive it.
    """

    def __init__(
        self,
        columns: PanopticColumns,
        pipeline: A.Compose,
        finish: A.Compose | None = None,
        rows: str | None = None,
    ):
        self.columns = columns
        self.pipeline = pipeline
        self.finish = finish  # None: training, the pipeline does everything
        self.rows = rows

    def __call__(
        self, row: Mapping[str, Any], example_id: Any = None, index: int | None = None
    ) -> dict | Undecodable:
        """``index``: the row's position in its split, which names it when it has no path."""
        image_value = row[self.columns.image]
        image = decode_image(image_value)
        if image is None:
            row_name = None if index is None else f"row {index}"
            return Undecodable(example_id, stored_path(image_value) or row_name)
        try:
            segments = self.segments(row, image.shape[:2], index)
        except AnnotationError as err:
            where = self.name(row, index)
            return Undecodable(example_id, f"{where}: {err}")
        if segments is None:
            return Undecodable(example_id, self.name(row, index))
        example = self.transformed(image, segments)
        if example_id is not None:
            example["ids"] = example_id
        return example

    def segments(
        self, row: Mapping[str, Any], shape: tuple[int, int], index: int | None
    ) -> Segments | None:
        """The row's segments at the image's ``shape``; None when undecodable."""
        columns = self.columns
        value = row.get(columns.annotation) if columns.annotation else None
        if value is None:
            return no_segments(shape)
        listed = row.get(columns.segments) if columns.segments else None
        where = self.name(row, index)
        segments = read_segments(
            columns.kind, value, listed, len(columns.names), where, columns.reduce_labels
        )
        if segments is not None and segments.index.shape != shape:
            h, w = segments.index.shape
            raise AnnotationError(
                f"the annotation is {h}x{w} (HxW) but its image {shape[0]}x{shape[1]}"
            )
        return segments

    def transformed(self, image: np.ndarray, segments: Segments) -> dict:
        if self.finish is None:
            reseed(self.pipeline)
            out = self.pipeline(image=image, mask=segments.index)
            return {"pixel_values": out["image"], **targets(out["mask"], segments)}
        resized = self.pipeline(image=image, mask=segments.index)
        out = self.finish(image=resized["image"], mask=resized["mask"])
        return {
            "pixel_values": out["image"],
            **targets(out["mask"], segments),
            "sizes": image.shape[:2],
            "content": resized["image"].shape[:2],
        }

    def name(self, row: Mapping[str, Any], index: int | None) -> str:
        column = self.columns.annotation
        value = row.get(column) if column else None
        return annotation_name(value, row.get(self.columns.image), column, index, self.rows)


class PanopticCollate:
    """Pad the examples to the largest in the batch and stack them; count the undecodable ones
    and list ids as nat_lightning.data.images.Collate does.

    The batch: ``pixel_values`` (B, 3, H, W) float32 (padding 0), ``pixel_mask`` (B, H, W) int64
    (1 image, 0 padding), ``mask_labels`` a list of B (N_i, H, W) float32 (padding 0),
    ``class_labels`` a list of B (N_i,) int64, ``panoptic_map`` (B, H, W, 2) int64 (padding
    VOID_SEGMENT), ``labels`` (the semantic map) (B, H, W) int64 (padding IGNORE_PIXEL), and, when
    ``evaluation``, ``sizes`` and ``content`` (B, 2) int64 as PairCollate's."""

    def __init__(self, size: int, evaluation: bool):
        self.size = size  # the side of the images of an empty batch
        self.evaluation = evaluation

    def __call__(self, items: list[dict | Undecodable]) -> dict[str, Any]:
        kept = [item for item in items if not isinstance(item, Undecodable)]
        height = max((item["pixel_values"].shape[-2] for item in kept), default=self.size)
        width = max((item["pixel_values"].shape[-1] for item in kept), default=self.size)
        batch = empty_batch(len(kept), height, width)
        for i, item in enumerate(kept):
            h, w = item["pixel_values"].shape[-2:]
            batch["pixel_values"][i, :, :h, :w] = torch.as_tensor(item["pixel_values"])
            batch["pixel_mask"][i, :h, :w] = 1
            batch["panoptic_map"][i, :h, :w] = item["panoptic_map"]
            batch["labels"][i, :h, :w] = item["labels"]
            masks = torch.zeros(len(item["mask_labels"]), height, width)
            masks[:, :h, :w] = item["mask_labels"]
            batch["mask_labels"].append(masks)
            batch["class_labels"].append(item["class_labels"])
        if self.evaluation:
            for key in ("sizes", "content"):
                values = [tuple(item[key]) for item in kept]
                batch[key] = torch.tensor(values, dtype=torch.int64).reshape(-1, 2)
        return {**batch, **bookkeeping(items)}

    def padding(self, last: dict | None, batch_size: int) -> dict[str, Any]:
        """A batch that counts no example: ``last``'s pixels (zeros of ``batch_size`` images when
        None), no segment, every pixel void."""
        pixels = padding_pixels(last, batch_size, self.size)
        batch = empty_batch(len(pixels), *pixels.shape[-2:])
        batch["pixel_values"] = pixels
        batch["pixel_mask"][:] = 1
        batch["mask_labels"] = [torch.zeros(0, *pixels.shape[-2:]) for _ in pixels]
        batch["class_labels"] = [torch.zeros(0, dtype=torch.int64) for _ in pixels]
        if self.evaluation:
            size = tuple(pixels.shape[-2:])
            batch["sizes"] = torch.tensor([size] * len(pixels), dtype=torch.int64).reshape(-1, 2)
            batch["content"] = batch["sizes"].clone()
        return {**batch, **bookkeeping([])}


def empty_batch(size: int, height: int, width: int) -> dict[str, Any]:
    """``size`` images of zeros, all padding and void, their mask and class lists empty."""
    return {
        "pixel_values": torch.zeros(size, 3, height, width),
        "pixel_mask": torch.zeros(size, height, width, dtype=torch.int64),
        "mask_labels": [],
        "class_labels": [],
        "panoptic_map": torch.full((size, height, width, 2), VOID_SEGMENT, dtype=torch.int64),
        "labels": torch.full((size, height, width), IGNORE_PIXEL, dtype=torch.int64),
    }
