"""Which columns hold the images and the labels, and what the classes are called.

Found from the features (the ``datasets.Image`` column, the ``ClassLabel`` column) or given by
name. Label names come from the ClassLabel, or, for a string or integer column, from its sorted
unique values (id i is the i-th value). Nothing here decodes an image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Features, Image, Value

from .folder_structure import unlabelled_folder_error
from .sources import Source, describe

CONVENTIONAL_LABELS = ("label", "labels")  # used when no column is a ClassLabel
IMAGE_DTYPES = ("binary", "large_binary", "string", "large_string")  # bytes or paths: cast to Image


@dataclass(frozen=True)
class Columns:
    image: str
    label: str | None  # None: unlabelled data (predict only)
    names: tuple[str, ...]  # class names by id
    label_ids: (
        dict[Any, int] | None
    )  # raw value -> id for string/integer labels; None for a ClassLabel


def overview(features: Features) -> dict[str, str]:
    """Column -> feature type, for error messages."""
    return {
        name: type(f).__name__ if not isinstance(f, Value) else f"Value({f.dtype})"
        for name, f in features.items()
    }


def check_image_column(features: Features, dataset: Source, column: str, field: str) -> str:
    """``column``, when the dataset has it and it holds images (a datasets.Image, or bytes or
    file paths); else a ValueError naming ``field``, the value and the columns."""
    feature = features.get(column)
    if feature is None:
        raise ValueError(
            f"{field}={column!r} is not in dataset {describe(dataset)}; "
            f"columns: {overview(features)}"
        )
    if not isinstance(feature, Image) and not (
        isinstance(feature, Value) and feature.dtype in IMAGE_DTYPES
    ):
        raise ValueError(
            f"{field}={column!r} of dataset {describe(dataset)} is {overview(features)[column]}; "
            "expected a datasets.Image, or bytes or file paths"
        )
    return column


def find_image_column(features: Features, dataset: Source, image_column: str | None) -> str:
    if image_column is not None:
        return check_image_column(features, dataset, image_column, "image_column")
    found = [name for name, f in features.items() if isinstance(f, Image)]
    if len(found) != 1:
        problem = (
            "has no image column (no datasets.Image feature)"
            if not found
            else f"has several image columns {found}"
        )
        raise ValueError(
            f"dataset {describe(dataset)} {problem}; columns: {overview(features)}; "
            "pass image_column= naming one of them"
        )
    return found[0]


def find_label_column(
    features: Features, dataset: Source, label_column: str | None, required: bool
) -> str | None:
    if label_column is not None:
        if label_column not in features:
            raise ValueError(
                f"label_column={label_column!r} is not in dataset {describe(dataset)}; "
                f"columns: {overview(features)}"
            )
        return label_column
    found = [name for name, f in features.items() if isinstance(f, ClassLabel)]
    found = found or [name for name in CONVENTIONAL_LABELS if name in features]
    if found:
        return found[0]
    if required:
        check_labelled_folder(features, dataset)
        raise ValueError(
            f"dataset {describe(dataset)} has no label column (no ClassLabel feature, no column "
            f"named {' or '.join(CONVENTIONAL_LABELS)}); columns: {overview(features)}; "
            "pass label_column="
        )
    return None


def check_labelled_folder(features: Features, dataset: Source) -> None:
    """A ValueError for an image folder that imagefolder read without labels, describing the
    folders that hold its images, at which depth, and what is expected (folder_structure)."""
    only_images = all(isinstance(f, Image) for f in features.values())
    if not (isinstance(dataset, str) and only_images and Path(dataset).expanduser().is_dir()):
        return
    message = unlabelled_folder_error(dataset)
    if message is not None:
        raise ValueError(message)


def is_categorical(feature) -> bool:
    if isinstance(feature, ClassLabel):
        return True
    return isinstance(feature, Value) and (
        feature.dtype in ("string", "large_string") or feature.dtype.startswith(("int", "uint"))
    )


def resolve_columns(
    features: Features,
    dataset: Source,
    image_column: str | None,
    label_column: str | None,
    label_values: Callable[[str], Iterable[Any]],
    labels_required: bool = True,
) -> Columns:
    """The image and label columns and the class names. ``label_values(column)`` yields every raw
    label (of all splits); it is only called for string and integer columns."""
    image = find_image_column(features, dataset, image_column)
    label = find_label_column(features, dataset, label_column, labels_required)
    if label is None:
        return Columns(image, None, (), None)
    feature = features[label]
    if not is_categorical(feature):
        raise ValueError(
            f"label_column={label!r} of dataset {describe(dataset)} is not categorical: it is "
            f"{overview(features)[label]}; expected a ClassLabel, string or integer column; "
            f"columns: {overview(features)}"
        )
    if isinstance(feature, ClassLabel):
        return Columns(image, label, tuple(feature.names), None)
    values = sorted({v for v in label_values(label) if v is not None})
    return Columns(
        image, label, tuple(str(v) for v in values), {v: i for i, v in enumerate(values)}
    )
