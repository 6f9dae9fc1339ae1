"""Segmentation masks: their columns, their class names, and masks decoded as class ids.

A mask is an image whose pixel values are class ids. Palette ("P") PNGs store the ids as palette
indices and grayscale ("L") PNGs as grey levels: both are read as they are stored, never converted
to RGB (which would turn ids into colours). An RGB mask holds colours, which become ids only
through an explicit ``color_map``. IGNORE_PIXEL (255, nat_lightning.batch) marks pixels that no
loss or metric counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from datasets import ClassLabel, Features
from PIL import Image as PILImage

from ..batch import IGNORE_PIXEL
from .columns import check_image_column, overview
from .images import decoded
from .sources import Source, describe

IMAGE_NAMES = ("image", "pixel_values")
MASK_NAMES = ("annotation", "label", "mask", "segmentation_mask", "semantic_map")
ID_MODES = ("P", "L", "1", "I;16", "I;16L", "I;16B", "I;16N", "I")  # pixel values are ids
MAX_IDS_LISTED = 8  # offending ids an error lists
LOSSY_FORMATS = ("JPEG", "MPO")  # PIL's names of formats whose compression changes pixel values


@dataclass(frozen=True)
class MaskColumns:
    image: str
    mask: str | None  # None: unlabelled data (predict_paths)
    names: tuple[str, ...]  # class names by id


def find_column(
    features: Features, dataset: Source, given: str | None, field: str, conventional: tuple
) -> str:
    """The column named ``given``, else the first of the ``conventional`` names that exists; it
    must hold images (a datasets.Image, or bytes or file paths)."""
    if given is None:
        found = [name for name in conventional if name in features]
        if not found:
            raise ValueError(
                f"dataset {describe(dataset)} has no column named {' or '.join(conventional)}; "
                f"columns: {overview(features)}; pass {field}= naming one of them"
            )
        given = found[0]
    return check_image_column(features, dataset, given, field)


def find_class_label(features: Features) -> ClassLabel | None:
    """The ClassLabel of the first list column of them (the classes a mask holds, as the
    embedded shapes store them). A ClassLabel of a plain column labels the whole image (e.g.
    scene_parse_150's scene_category), not the pixels, and names nothing here."""
    for feature in features.values():
        inner = getattr(feature, "feature", None)  # Sequence, List, LargeList
        if isinstance(inner, ClassLabel):
            return inner
    return None


def class_names(
    features: Features, labels_file: str | None, num_classes: int | None, dataset: Source
) -> tuple[str, ...]:
    """Names by id: from ``labels_file``, else a ClassLabel of the features, else ``class_i`` for
    ``num_classes`` ids. ``num_classes``, when given with names, must agree with them."""
    if labels_file is not None:
        names, origin = read_labels_file(labels_file), f"labels_file={labels_file!r}"
    elif (label := find_class_label(features)) is not None:
        names, origin = tuple(label.names), f"the ClassLabel of dataset {describe(dataset)}"
    elif num_classes is not None:
        return tuple(f"class_{i}" for i in range(num_classes))
    else:
        raise ValueError(
            f"dataset {describe(dataset)} does not name its classes (no ClassLabel feature; "
            f"columns: {overview(features)}); pass labels_file= (a JSON of id -> name) or "
            "unnamed_classes="
        )
    if num_classes is not None and num_classes != len(names):
        raise ValueError(
            f"unnamed_classes={num_classes} but {origin} names {len(names)} classes; expected them "
            "to agree (or unnamed_classes=None)"
        )
    return names


def read_labels_file(path: str) -> tuple[str, ...]:
    """A JSON object of id -> name (transformers' id2label), or a list of names; ids missing
    from an object are named ``class_i``."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"labels_file={path!r} cannot be read as JSON: {err}") from err
    if isinstance(data, list):
        return tuple(str(name) for name in data)
    try:
        by_id = {int(key): str(name) for key, name in dict(data).items()}
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"labels_file={path!r}: expected a JSON list of names or an object of "
            f'integer ids -> names, e.g. {{"0": "wall"}}'
        ) from err
    if not by_id or min(by_id) < 0:
        raise ValueError(f"labels_file={path!r} has ids {sorted(by_id)}; expected ids >= 0")
    return tuple(by_id.get(i, f"class_{i}") for i in range(max(by_id) + 1))


def parse_color_map(color_map: Mapping[Any, int] | None) -> dict[int, int] | None:
    """``{"#rrggbb" or "r,g,b" or (r, g, b): id}`` as ``{r << 16 | g << 8 | b: id}``."""
    if color_map is None:
        return None
    parsed = {}
    for key, class_id in color_map.items():
        rgb = colour_of(key)
        if rgb is None or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(
                f"color_map key {key!r}: expected a colour as '#rrggbb', 'r,g,b' or (r, g, b)"
            )
        if not 0 <= int(class_id) <= IGNORE_PIXEL:
            raise ValueError(
                f"color_map[{key!r}]={class_id!r}: expected an id in 0..{IGNORE_PIXEL}"
            )
        parsed[rgb[0] << 16 | rgb[1] << 8 | rgb[2]] = int(class_id)
    return parsed


def colour_of(key: Any) -> tuple[int, int, int] | None:
    try:
        if isinstance(key, str) and key.startswith("#") and len(key) == 7:
            return tuple(int(key[i : i + 2], 16) for i in (1, 3, 5))
        parts = key.split(",") if isinstance(key, str) else list(key)
        rgb = tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        return None
    return rgb if len(rgb) == 3 else None


class MaskModeError(ValueError):
    """A mask that decodes but holds colours, not ids, and no color_map says which is which."""


def decode_mask(value: Any, color_map: dict[int, int] | None, where: str) -> np.ndarray | None:
    """Stored bytes or a path as an (H, W) array of class ids (uint8, or uint16 for 16-bit
    masks); None when it cannot be decoded. ``where`` names the mask in a MaskModeError."""
    read = read_mask(value, color_map, where)
    return None if read is None else read[0]


def read_mask(
    value: Any, color_map: dict[int, int] | None, where: str
) -> tuple[np.ndarray, str | None] | None:
    """As ``decode_mask``, with the file's format (PIL's name: "PNG", "JPEG", ...)."""
    read = decoded(value, lambda image: (image.mode, image.format, as_ids_or_rgb(image)))
    if read is None:
        return None
    mode, file_format, pixels = read
    if mode not in ID_MODES:
        if color_map is None:
            raise MaskModeError(
                f"mask {where} is a {mode} image: its pixels are colours, not class ids; expected "
                "a palette (P) or grayscale (L) mask, or pass color_map= ({'#rrggbb': id, ...})"
            )
        return ids_of_colours(pixels, color_map), file_format
    if pixels.dtype == bool:
        return pixels.astype(np.uint8), file_format
    if pixels.max(initial=0) > 65535 or pixels.min(initial=0) < 0:
        raise MaskModeError(f"mask {where} holds ids outside 0..65535 (mode {mode})")
    return pixels.astype(np.uint8 if pixels.max(initial=0) <= 255 else np.uint16), file_format


class MaskLabelError(ValueError):
    """A mask holding ids that are neither a class nor IGNORE_PIXEL: the loss cannot take them."""


def foreign_ids(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """The ids of ``mask`` that are neither a class (0..num_classes-1) nor IGNORE_PIXEL, sorted."""
    if mask.max(initial=0) < num_classes:  # the common case: one pass, no sort
        return mask[:0]
    return np.unique(mask[(mask >= num_classes) & (mask != IGNORE_PIXEL)])


def label_error(
    where: str, found: np.ndarray, num_classes: int, lossy: bool, reduced: bool, mapped: bool
) -> MaskLabelError:
    """The error of a mask (``where``) holding the ids ``found``: they, the classes and the
    likely fixes; a ``lossy`` (JPEG) mask's first, as its compression invents ids."""
    listed = ", ".join(str(int(i)) for i in found[:MAX_IDS_LISTED])
    more = f", ... ({len(found)} ids)" if len(found) > MAX_IDS_LISTED else ""
    largest = int(found[-1])
    lossless = "masks must be lossless PNGs"
    fixes = []
    if lossy:
        fixes.append(
            f"the mask is a JPEG, whose lossy compression invents ids where classes meet: "
            f"{lossless} (save the original ids as .png)"
        )
    count = "count every class the masks hold with unnamed_classes= or labels_file="
    if largest < IGNORE_PIXEL:
        count += f" (ids up to {largest} need unnamed_classes={largest + 1})"
    else:
        count += f" (at most {IGNORE_PIXEL}: ids 0..{IGNORE_PIXEL - 1}; {IGNORE_PIXEL} is ignored)"
    fixes.append(count)
    if not reduced:
        fixes.append("reduce_labels=True if id 0 means 'other' and the classes start at 1")
    fixes.append("a color_map whose ids are classes" if mapped else "color_map= for colour masks")
    if not lossy:
        fixes.append(f"{lossless} (JPEG compression invents ids)")
    after = " (after reduce_labels)" if reduced else " (after color_map)" if mapped else ""
    return MaskLabelError(
        f"mask {where} holds ids [{listed}{more}]{after} that are neither one of the "
        f"{num_classes} classes (0..{num_classes - 1}) nor {IGNORE_PIXEL} (ignored); likely fixes: "
        + "; ".join(fixes)
    )


def mask_colours(value: Any, limit: int = MAX_IDS_LISTED) -> list[str]:
    """Up to ``limit`` colours of a stored mask as '#rrggbb', for an error about a color_map."""
    rgb = decoded(value, lambda image: np.asarray(image.convert("RGB")).reshape(-1, 3))
    if rgb is None:
        return []
    return ["#{:02x}{:02x}{:02x}".format(*c) for c in np.unique(rgb, axis=0)[:limit].tolist()]


def as_ids_or_rgb(image: PILImage.Image) -> np.ndarray:
    """The stored values of an id mode (never converted: a palette's indices, not its colours),
    else RGB colours."""
    return np.asarray(image if image.mode in ID_MODES else image.convert("RGB"))


def ids_of_colours(rgb: np.ndarray, color_map: dict[int, int]) -> np.ndarray:
    """(H, W, 3) colours -> (H, W) uint8 ids; colours the map does not name become IGNORE_PIXEL."""
    codes = rgb[..., 0].astype(np.int64) << 16 | rgb[..., 1].astype(np.int64) << 8 | rgb[..., 2]
    unique, inverse = np.unique(codes, return_inverse=True)
    lookup = np.array([color_map.get(int(code), IGNORE_PIXEL) for code in unique], dtype=np.uint8)
    return lookup[inverse].reshape(codes.shape)


def reduce_labels(mask: np.ndarray) -> np.ndarray:
    """ADE20K's convention: 0 (other) becomes IGNORE_PIXEL, every other id drops by one;
    IGNORE_PIXEL stays."""
    reduced = mask.astype(np.int64) - 1
    reduced[(mask == 0) | (mask == IGNORE_PIXEL)] = IGNORE_PIXEL
    return reduced.astype(mask.dtype)


def fit_mask(mask: np.ndarray, shape: tuple[int, int], mode: str, where: str) -> np.ndarray:
    """The mask at the image's (H, W): resized with nearest neighbours (``mode="resize"``) or a
    ValueError (``mode="error"``) naming the pair and both sizes."""
    if mask.shape == shape:
        return mask
    if mode == "error":
        raise ValueError(
            f"{where}: the image is {shape[0]}x{shape[1]} (HxW) but its mask is "
            f"{mask.shape[0]}x{mask.shape[1]}; expected equal sizes, or "
            "mask_size_mismatch='resize' to resize masks with nearest neighbours"
        )
    return cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
