"""Image-mask pairs: from a dataset row to a transformed example, and examples to a batch.

A pair whose image or mask cannot be decoded becomes an ``Undecodable`` (counted and named like
an undecodable classification image, see nat_lightning.data.images); a mask that decodes but
cannot be read as class ids (an RGB mask without color_map) or, with
``mask_size_mismatch="error"``, does not fit its image stops with a ValueError naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import albumentations as A
import numpy as np
import torch

from .images import Undecodable, bookkeeping, decode_image, padding_pixels, stored_path
from .masks import IGNORE, MaskColumns, decode_mask, fit_mask, reduce_labels
from .transforms import reseed


class PairDecoder:
    """A row -> ``{"pixel_values": (3, H, W) float32, "labels": (H, W) ids[, "ids"]}``, plus
    ``"sizes"`` (the decoded image's (h, w)) and ``"content"`` (its (h, w) after the resize, before
    the padding) in evaluation; or an ``Undecodable``.

    Training runs ``pipeline`` (random: reseeded from torch per example); evaluation runs
    ``pipeline`` (the resize), notes the content size, then ``finish`` (pad and normalise). A row
    without a mask (unlabelled data) gets labels of IGNORE only. A plain picklable object, so
    DataLoader workers receive it.
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
    ):
        self.columns = columns
        self.pipeline = pipeline
        self.finish = finish  # None: training, the pipeline does everything
        self.reduce = reduce
        self.color_map = color_map
        self.mismatch = mismatch

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
        mask = self.mask(image, image_value, mask_value, row_name)
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
        self, image: np.ndarray, image_value: Any, mask_value: Any, row_name: str | None
    ) -> np.ndarray | None:
        """The pair's (H, W) ids at the image's size; None when the mask cannot be decoded."""
        shape = image.shape[:2]
        if mask_value is None:
            return np.full(shape, IGNORE, dtype=np.uint8)
        where = pair_name(self.columns.mask, row_name, image_value, mask_value)
        mask = decode_mask(mask_value, self.color_map, where)
        if mask is None:
            return None
        if self.reduce:
            mask = reduce_labels(mask)
        return fit_mask(mask, shape, self.mismatch, where)


def pair_name(column: str, row_name: str | None, image_value: Any, mask_value: Any) -> str:
    """How errors name a pair: the mask column, the row and the files where known."""
    files = [f"{kind} {path!r}" for kind, path in (("image", stored_path(image_value)),
             ("mask", stored_path(mask_value))) if path]  # fmt: skip
    where = ", ".join([row_name or "a streamed row", *files])
    return f"{column!r} of {where}"


class PairCollate:
    """Pad the examples to the largest in the batch (image 0, mask IGNORE) and stack them; count
    the undecodable ones and list ids as nat_lightning.data.images.Collate does.

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
        labels = torch.full((len(kept), height, width), IGNORE, dtype=torch.int64)
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
        None), every label IGNORE."""
        pixels = padding_pixels(last, batch_size, self.size)
        batch = {
            "pixel_values": pixels,
            "labels": torch.full((len(pixels), *pixels.shape[-2:]), IGNORE, dtype=torch.int64),
        }
        if self.evaluation:
            size = tuple(pixels.shape[-2:])
            batch["sizes"] = torch.tensor([size] * len(pixels), dtype=torch.int64).reshape(-1, 2)
            batch["content"] = batch["sizes"].clone()
        return {**batch, **bookkeeping([])}
