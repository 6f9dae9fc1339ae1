"""Image-mask pairs: from a dataset row to a transformed example, and examples to a batch.

A pair whose image or mask cannot be decoded becomes an ``Undecodable`` (counted and named like
an undecodable classification image, see nat_lightning.data.images); a mask that decodes but
cannot be read as class ids (an RGB mask without color_map), holds an id that is neither a class
nor IGNORE_PIXEL (MaskLabelError) or, with ``mask_size_mismatch="error"``, does not fit its image
stops with a ValueError naming it: its file, else its row.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import albumentations as A
import numpy as np
import torch
from datasets import Dataset

from ..batch import IGNORE_PIXEL
from .images import Undecodable, bookkeeping, decode_image, padding_pixels, stored_path
from .masks import (
    LOSSY_FORMATS,
    MaskColumns,
    fit_mask,
    foreign_ids,
    label_error,
    read_mask,
    reduce_labels,
)
from .transforms import reseed


class PairDecoder:
    """A row -> ``{"pixel_values": (3, H, W) float32, "labels": (H, W) ids[, "ids"]}``, plus
    ``"sizes"`` (the decoded image's (h, w)) and ``"content"`` (its (h, w) after the resize, before
    the padding) in evaluation; or an ``Undecodable``.

    Training runs ``pipeline`` (random: reseeded from torch per example); evaluation runs
    ``pipeline`` (the resize), notes the content size, then ``finish`` (pad and normalise). A row
    without a mask (unlabelled data) gets labels of IGNORE_PIXEL only. A plain picklable object, so
    DataLoader workers receive it.

    ``check``: refuse masks holding ids that are neither a class of ``columns.names`` nor
    IGNORE_PIXEL (the loss cannot take them; predict, which ignores the labels, need not).
    ``rows``: what a row index counts in, e.g. ``split 'train'``, for errors about masks without a
    file; None where rows are no dataset's (an images/ + masks/ folder: its files name them).
    """

    def __init__(
        self,
        columns: MaskColumns,
        pipeline: A.Compose,
        finish: A.Compose | None = None,
        *,
        reduce: bool = False,
        color_map: dict[int, int] | None = None,
        mismatch: str = "resize",
        check: bool = False,
        rows: str | None = None,
    ):
        self.columns = columns
        self.pipeline = pipeline
        self.finish = finish  # None: training, the pipeline does everything
        self.reduce = reduce
        self.color_map = color_map
        self.mismatch = mismatch
        self.check = check
        self.rows = rows
        self.warned_lossy = False  # per process: each DataLoader worker has its own copy

    def __call__(
        self, row: Mapping[str, Any], example_id: Any = None, index: int | None = None
    ) -> dict | Undecodable:
        """``index``: the row's position in its split, which names it when it has no path."""
        image_value = row[self.columns.image]
        mask_value = row.get(self.columns.mask) if self.columns.mask else None
        row_name = None if index is None else f"row {index}"
        image = decode_image(image_value)
        if image is None:
            return Undecodable(example_id, stored_path(image_value) or row_name)
        mask = self.mask(image.shape[:2], image_value, mask_value, index)
        if mask is None:
            return Undecodable(example_id, stored_path(mask_value) or row_name)
        if self.finish is None:
            reseed(self.pipeline)
            out = self.pipeline(image=image, mask=mask)
            example = {"pixel_values": out["image"], "labels": out["mask"]}
        else:
            resized = self.pipeline(image=image, mask=mask)
            out = self.finish(image=resized["image"], mask=resized["mask"])
            example = {
                "pixel_values": out["image"],
                "labels": out["mask"],
                "sizes": image.shape[:2],
                "content": resized["image"].shape[:2],
            }
        if example_id is not None:
            example["ids"] = example_id
        return example

    def mask(
        self, shape: tuple[int, int], image_value: Any, mask_value: Any, index: int | None
    ) -> np.ndarray | None:
        """The pair's (H, W) ids at the image's ``shape``; None when the mask cannot be
        decoded."""
        if mask_value is None:
            return np.full(shape, IGNORE_PIXEL, dtype=np.uint8)
        where = self.name(image_value, mask_value, index)
        mask = self.labels(mask_value, where)
        return None if mask is None else fit_mask(mask, shape, self.mismatch, where)

    def labels(self, mask_value: Any, where: str) -> np.ndarray | None:
        """The stored mask as class ids (reduced, mapped and checked); None when it cannot be
        decoded. ``where`` names it in errors."""
        read = read_mask(mask_value, self.color_map, where)
        if read is None:
            return None
        mask, file_format = read
        if self.reduce:
            mask = reduce_labels(mask)
        if self.check:
            self.check_ids(mask, where, file_format in LOSSY_FORMATS)
        return mask

    def check_ids(self, mask: np.ndarray, where: str, lossy: bool) -> None:
        """A MaskLabelError for ids that are no class; the first lossy (JPEG) mask whose ids are
        classes gets a warning, once per decoder and process: its compression may have turned
        an edge between two classes into a third."""
        found = foreign_ids(mask, len(self.columns.names))
        if len(found):
            mapped = self.color_map is not None
            n = len(self.columns.names)
            raise label_error(where, found, n, lossy, self.reduce, mapped)
        if lossy and not self.warned_lossy:
            self.warned_lossy = True
            warnings.warn(
                f"mask {where} is a JPEG: its lossy compression changes ids where classes meet "
                "(an edge between ids 0 and 4 reads 1..3); masks must be lossless PNGs",
                stacklevel=2,
            )

    def name(self, image_value: Any, mask_value: Any, index: int | None) -> str:
        """How errors name a mask: its file; else its column and its image's file; else its
        column and row. The row only where it is a row of the dataset (``rows``)."""
        row = None
        if index is not None:
            row = f"row {index} of {self.rows}" if self.rows else f"row {index}"
        if mask_file := stored_path(mask_value):
            return f"file {mask_file!r}" + (f" ({row})" if self.rows and row else "")
        column = repr(self.columns.mask)
        if image_file := stored_path(image_value):
            return f"{column} of the image file {image_file!r}"
        return f"{column} of {row or 'a streamed row'}"


def scanned_rows(size: int, limit: int) -> list[int]:
    """Every row of a split of up to ``limit`` rows, else ``limit`` rows evenly spaced over it
    (first and last included), so that a split sorted by scene or class is sampled across."""
    if size <= limit:
        return list(range(size))
    return sorted({round(k * (size - 1) / (limit - 1)) for k in range(limit)})


def count_labelled(rows: Dataset, decoder: PairDecoder, indices: list[int]) -> tuple[int, int]:
    """(masks decoded, their labelled pixels) of ``rows[indices]`` as ``decoder`` reads them:
    reduced, mapped and checked (raising what it raises). Masks that cannot be decoded, or that
    a row lacks, are not counted (the loaders count the former)."""
    read, pixels = class_pixels(rows, decoder, indices)
    return read, int(pixels.sum())


def class_pixels(rows: Dataset, decoder: PairDecoder, indices: list[int]) -> tuple[int, np.ndarray]:
    """(masks decoded, labelled pixels per class of ``decoder.columns.names``) of
    ``rows[indices]``, read as ``count_labelled`` reads them."""
    image, mask = decoder.columns.image, decoder.columns.mask
    kept = [c for c in (image, mask) if c in rows.column_names]
    read, pixels = 0, np.zeros(len(decoder.columns.names), dtype=np.int64)
    for index, row in zip(indices, rows.select_columns(kept).select(indices)):
        value = row.get(mask)
        if value is None:
            continue
        ids = decoder.labels(value, decoder.name(row.get(image), value, index))
        if ids is not None:
            read += 1
            labelled = ids[ids != IGNORE_PIXEL].astype(np.int64)
            pixels += np.bincount(labelled, minlength=len(pixels))[: len(pixels)]
    return read, pixels


class PairCollate:
    """Pad the examples to the largest in the batch (image 0, mask IGNORE_PIXEL) and stack them;
    count the undecodable ones and list ids as nat_lightning.data.images.Collate does.

    The batch: ``pixel_values`` (B, 3, H, W) float32, ``labels`` (B, H, W) int64, and, when
    ``evaluation``, ``sizes`` and ``content`` (B, 2) int64: each image's original (h, w) and its
    (h, w) after the resize, before any padding (its top-left corner of the batch)."""

    def __init__(self, size: int, evaluation: bool):
        self.size = size  # the side of the images of an empty batch
        self.evaluation = evaluation

    def __call__(self, items: list[dict | Undecodable]) -> dict[str, Any]:
        kept = [item for item in items if not isinstance(item, Undecodable)]
        height = max((item["pixel_values"].shape[-2] for item in kept), default=self.size)
        width = max((item["pixel_values"].shape[-1] for item in kept), default=self.size)
        pixels = torch.zeros(len(kept), 3, height, width)
        labels = torch.full((len(kept), height, width), IGNORE_PIXEL, dtype=torch.int64)
        for i, item in enumerate(kept):
            image = torch.as_tensor(item["pixel_values"])
            h, w = image.shape[-2:]
            pixels[i, :, :h, :w] = image
            labels[i, :h, :w] = torch.as_tensor(item["labels"]).long()
        batch = {"pixel_values": pixels, "labels": labels}
        if self.evaluation:
            for key in ("sizes", "content"):
                values = [tuple(item[key]) for item in kept]
                batch[key] = torch.tensor(values, dtype=torch.int64).reshape(-1, 2)
        return {**batch, **bookkeeping(items)}

    def padding(self, last: dict | None, batch_size: int) -> dict[str, Any]:
        """A batch that counts no example: ``last``'s pixels (zeros of ``batch_size`` images when
        None), every label IGNORE_PIXEL."""
        pixels = padding_pixels(last, batch_size, self.size)
        batch = {
            "pixel_values": pixels,
            "labels": torch.full(
                (len(pixels), *pixels.shape[-2:]), IGNORE_PIXEL, dtype=torch.int64
            ),
        }
        if self.evaluation:
            size = tuple(pixels.shape[-2:])
            batch["sizes"] = torch.tensor([size] * len(pixels), dtype=torch.int64).reshape(-1, 2)
            batch["content"] = batch["sizes"].clone()
        return {**batch, **bookkeeping([])}
