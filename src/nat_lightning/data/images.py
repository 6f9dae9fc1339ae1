"""From stored image bytes to transformed examples and batches, skipping what cannot be decoded.

Image columns are read with ``datasets.Image(decode=False)``: every row holds ``{"bytes", "path"}``
and is decoded here, inside a ``try``, so that one corrupt file costs one example, not the run.
An undecodable example becomes an ``Undecodable`` that keeps its id and name: the batch still
lists it among the ids (predict) and counts it, so reports can say which files failed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import albumentations as A
import numpy as np
import torch
from PIL import Image, ImageFile

from ..batch import IGNORE_LABEL
from .columns import Columns
from .labels import LabelError, LabelReader
from .transforms import reseed

T = TypeVar("T")
MAX_NAMED = 10  # undecodable examples a tally keeps by name, for reports
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


def stored_path(value: Mapping[str, Any] | bytes | str | None) -> str | None:
    """The file path a stored image value carries, if any."""
    if isinstance(value, Mapping):
        return value.get("path")
    return value if isinstance(value, str) else None


def image_source(value: Mapping[str, Any] | bytes | str | None) -> io.BytesIO | str | None:
    """What PIL opens for a stored image value: its bytes, else its path; None when neither."""
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
    else:
        data, path = (value, None) if isinstance(value, bytes) else (None, value)
    return io.BytesIO(data) if data is not None else path


@contextmanager
def truncated_raises() -> Iterator[None]:
    """PIL's default while an image loads: a truncated file (JPEG, PNG, GIF, BMP, ... cut short)
    raises OSError, even where other code set ``ImageFile.LOAD_TRUNCATED_IMAGES = True``, under
    which PIL fills the missing rows (grey in a JPEG, black in a PNG) and raises nothing.
    Restored afterwards; data loading decodes in one thread per process (DataLoader workers are
    processes)."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def decoded(
    value: Mapping[str, Any] | bytes | str | None, read: Callable[[Image.Image], T]
) -> T | None:
    """``read`` of the image a stored value holds (bytes, else a path); None when there is none
    or it cannot be opened, loaded or read, a truncated file included (truncated_raises)."""
    source = image_source(value)
    if source is None:
        return None
    try:
        with truncated_raises(), Image.open(source) as image:
            image.load()
            return read(image)
    except Exception:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        return None


def decode_image(value: Mapping[str, Any] | bytes | str | None) -> np.ndarray | None:
    """Stored bytes or a file path as (H, W, 3) uint8 RGB; None when it cannot be decoded."""
    return decoded(value, to_rgb)


@dataclass(frozen=True)
class Undecodable:
    """What an example whose image cannot be decoded becomes: its id (predict; None otherwise)
    and its name for reports, the stored path or else ``row <index>`` (None when neither is known,
    e.g. a streamed row without a path)."""

    id: Any = None
    name: str | None = None


class ExampleDecoder:
    """A dataset row -> ``{"pixel_values": (3, H, W) float32, "labels": int | (K,) int64[, "ids"]}``,
    or an ``Undecodable`` when its image cannot be decoded.

    Labels (data.labels.LabelReader): a class id (IGNORE_LABEL for none), or for multi-label data
    a 0/1 vector over the classes. A label that is no class is a LabelError naming the row. A
    plain picklable object, so DataLoader workers receive it.
    """

    def __init__(self, columns: Columns, transform: A.BaseCompose, random: bool):
        self.columns = columns
        self.transform = transform
        self.random = random  # reseed the (random) training pipeline from torch's RNG per example
        self.label = LabelReader(columns)

    def __call__(
        self, row: Mapping[str, Any], example_id: Any = None, index: int | None = None
    ) -> dict | Undecodable:
        """``index``: the row's position in its split, which names it when it has no path."""
        value = row[self.columns.image]
        try:
            labels = self.label(row)
        except LabelError as err:
            name = stored_path(value) or (None if index is None else f"row {index}")
            raise LabelError(f"{name or 'a row'}: {err}") from None
        pixels = decode_image(value)
        if pixels is None:
            name = stored_path(value) or (None if index is None else f"row {index}")
            return Undecodable(example_id, name)
        if self.random:
            reseed(self.transform)
        example = {"pixel_values": self.transform(image=pixels)["image"], "labels": labels}
        if example_id is not None:
            example["ids"] = example_id
        return example


class Collate:
    """Stack the decoded examples into a batch; count the undecodable ones and keep their names.

    The batch: ``pixel_values`` (B, 3, H, W) float32 and ``labels`` of the B decoded examples,
    (B,) int64 class ids, or (B, K) int64 0/1 rows for multi-label data (``num_labels`` K). B may
    be 0: a batch of undecodable images only. Besides: ``num_examples`` (an int, decoded or not),
    ``num_skipped`` (an int) and ``skipped_names`` (a list of str, the undecodable examples' names
    where known). When the examples carry ids (predict), ``ids`` lists every example of the batch
    in input order, undecodable ones included, and ``decoded`` (a list of bool of the same length)
    says which of them are the rows of ``pixel_values``.
    """

    def __init__(self, image_size: int, num_labels: int | None = None):
        """``num_labels``: K of multi-label data; None for class ids."""
        self.image_size = image_size
        self.num_labels = num_labels

    def __call__(self, items: list[dict | Undecodable]) -> dict[str, Any]:
        kept = [item for item in items if not isinstance(item, Undecodable)]
        if kept:
            pixels = torch.stack([torch.as_tensor(item["pixel_values"]) for item in kept])
        else:
            pixels = torch.zeros(0, 3, self.image_size, self.image_size)
        labels = [item["labels"] for item in kept]
        if self.num_labels is None:
            labels = torch.tensor(labels, dtype=torch.int64)
        else:  # an unlabelled example's IGNORE_LABEL (predict) fills its row
            rows = [np.broadcast_to(np.asarray(v, dtype=np.int64), self.num_labels) for v in labels]
            labels = torch.as_tensor(np.stack(rows) if rows else np.zeros((0, self.num_labels)))
            labels = labels.long()
        return {"pixel_values": pixels.float(), "labels": labels, **bookkeeping(items)}

    def padding(self, last: dict | None, batch_size: int) -> dict[str, Any]:
        """A batch that counts no example: ``last``'s pixels (zeros of ``batch_size`` images when
        None), every label IGNORE_LABEL."""
        pixels = padding_pixels(last, batch_size, self.image_size)
        shape = (len(pixels),) if self.num_labels is None else (len(pixels), self.num_labels)
        labels = torch.full(shape, IGNORE_LABEL, dtype=torch.int64)
        return {"pixel_values": pixels, "labels": labels, **bookkeeping([])}


def padding_pixels(last: dict | None, batch_size: int, side: int) -> torch.Tensor:
    """The pixels of a padding batch: ``last``'s, or zeros of ``batch_size`` square images when
    this rank saw no image at all."""
    return torch.zeros(batch_size, 3, side, side) if last is None else last["pixel_values"]


def bookkeeping(items: list[dict | Undecodable]) -> dict[str, Any]:
    """What a batch says about its examples besides their tensors: ``num_examples``,
    ``num_skipped``, ``skipped_names``, and, when they carry ids, ``ids`` and ``decoded``."""
    skipped = [item for item in items if isinstance(item, Undecodable)]
    out = {
        "num_examples": len(items),
        "num_skipped": len(skipped),
        "skipped_names": [item.name for item in skipped if item.name is not None],
    }
    kept = [item for item in items if not isinstance(item, Undecodable)]
    if any("ids" in item for item in kept) or any(item.id is not None for item in skipped):
        out["ids"] = [item.id if isinstance(item, Undecodable) else item["ids"] for item in items]
        out["decoded"] = [not isinstance(item, Undecodable) for item in items]
    return out


@dataclass
class SkipTally:
    """One process's count of one stage's epoch: examples read, how many of them could not be
    decoded, and the names of the first MAX_NAMED of those."""

    seen: int = 0
    skipped: int = 0
    names: list[str] = field(default_factory=list)

    def take(self, batch: dict) -> None:
        """Add a batch's counts, removing them from the batch (the model needs none of them)."""
        self.seen += int(batch.pop("num_examples", 0))
        self.skipped += int(batch.pop("num_skipped", 0))
        names = batch.pop("skipped_names", [])
        self.names += names[: max(0, MAX_NAMED - len(self.names))]


class ImageExamples(torch.utils.data.Dataset):
    """Map-style view of a ``datasets.Dataset``: row i through an ExampleDecoder.
    ``ids``: False for none, True for the row index, or one id per row (e.g. file paths)."""

    def __init__(self, rows, decoder: ExampleDecoder, ids: bool | Sequence[Any] = False):
        self.rows = rows
        self.decoder = decoder
        self.ids = ids

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict | Undecodable:
        example_id = None if self.ids is False else index if self.ids is True else self.ids[index]
        return self.decoder(self.rows[index], example_id, index)
