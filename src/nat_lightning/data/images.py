"""From stored image bytes to transformed examples and batches, skipping what cannot be decoded.

Image columns are read with ``datasets.Image(decode=False)``: every row holds ``{"bytes", "path"}``
and is decoded here, inside a ``try``, so that one corrupt file costs one example, not the run.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from PIL import Image

from .columns import Columns
from .transforms import reseed

IGNORE_INDEX = -100  # label of examples without one (unlabelled rows, padding): no loss, no metric
# the background that transparent pixels are composited over, as transformers does
WHITE = (255, 255, 255)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL mode as an 8-bit RGB array of shape (H, W, 3).

    - transparency (RGBA, LA, PA, P with a transparent colour): composited over white;
    - 16/32-bit integers (I;16*, I): the 0..65535 range scaled to 0..255 (v / 257), not clipped;
    - F (32-bit float): PIL's own scale, 0..255, clipped;
    - everything else (L, 1, P, CMYK, YCbCr, ...): PIL's conversion.
    """
    mode = image.mode
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I
        pixels = np.asarray(image, dtype=np.float64)
        gray = np.rint(np.clip(pixels, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "F":
        gray = np.rint(np.clip(np.asarray(image, dtype=np.float64), 0, 255)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"))


def decode_image(value: Mapping[str, Any] | bytes | str | None) -> np.ndarray | None:
    """Stored bytes or a file path as (H, W, 3) uint8 RGB; None when it cannot be decoded."""
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
    else:
        data, path = (value, None) if isinstance(value, bytes) else (None, value)
    if data is None and path is None:
        return None
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as image:
            image.load()
            return to_rgb(image)
    except Exception:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        return None


class ExampleDecoder:
    """A dataset row -> ``{"pixel_values": (3, H, W) float32, "labels": int[, "ids"]}``, or None
    when its image cannot be decoded.

    Labels: a ClassLabel id as stored (its ``-1``, "no label", becomes IGNORE_INDEX); a string or
    integer through ``columns.label_ids``; IGNORE_INDEX for unlabelled data. A plain picklable
    object, so DataLoader workers receive it.
    """

    def __init__(self, columns: Columns, transform: A.BaseCompose, random: bool):
        self.columns = columns
        self.transform = transform
        self.random = random  # reseed the (random) training pipeline from torch's RNG per example

    def label(self, row: Mapping[str, Any]) -> int:
        if self.columns.label is None:
            return IGNORE_INDEX
        value = row.get(self.columns.label)  # a test split may lack the column
        if self.columns.label_ids is not None:
            return self.columns.label_ids.get(value, IGNORE_INDEX)
        return IGNORE_INDEX if value is None or value < 0 else int(value)

    def __call__(self, row: Mapping[str, Any], example_id: Any = None) -> dict | None:
        pixels = decode_image(row[self.columns.image])
        if pixels is None:
            return None
        if self.random:
            reseed(self.transform)
        example = {"pixel_values": self.transform(image=pixels)["image"], "labels": self.label(row)}
        if example_id is not None:
            example["ids"] = example_id
        return example


class Collate:
    """Stack examples into a batch; drop the undecodable ones (None) and count them.

    The batch: ``pixel_values`` (B, 3, H, W) float32, ``labels`` (B,) int64, ``num_skipped``
    (an int), and ``ids`` (a list) when the examples carry them.
    """

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, items: list[dict | None]) -> dict[str, Any]:
        kept = [item for item in items if item is not None]
        if kept:
            pixels = torch.stack([torch.as_tensor(item["pixel_values"]) for item in kept])
        else:
            pixels = torch.zeros(0, 3, self.image_size, self.image_size)
        batch = {
            "pixel_values": pixels.float(),
            "labels": torch.tensor([item["labels"] for item in kept], dtype=torch.int64),
            "num_skipped": len(items) - len(kept),
        }
        if any("ids" in item for item in kept):
            batch["ids"] = [item["ids"] for item in kept]
        return batch


class ImageExamples(torch.utils.data.Dataset):
    """Map-style view of a ``datasets.Dataset``: row i through an ExampleDecoder (None if corrupt).
    ``ids``: False for none, True for the row index, or one id per row (e.g. file paths)."""

    def __init__(self, rows, decoder: ExampleDecoder, ids: bool | Sequence[Any] = False):
        self.rows = rows
        self.decoder = decoder
        self.ids = ids

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict | None:
        example_id = None if self.ids is False else index if self.ids is True else self.ids[index]
        return self.decoder(self.rows[index], example_id)
