"""Which columns hold the images and the labels, and what the classes are called.

Found from the features (the ``datasets.Image`` column, the ``ClassLabel`` column) or given by
name. Label names come from the ClassLabel, or, for a string or integer column, from its sorted
unique values (id i is the i-th value). Nothing here decodes an image.

A label column that holds a list per image makes the data multi-label (a set of classes per
image): a list of ClassLabel ids (``Sequence(ClassLabel)``), of class names or of integer ids, or
a multi-hot vector (0/1 per class: bool or float lists, fixed-length integer lists, or integer
lists that repeat a value, which a list of class ids never does; its classes are named by their
position). ``label_sets`` overrides what the column says: True reads plain labels as sets of
one class; False reads each list as one class and refuses a list holding none or several.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Features, Image, LargeList, List, Value

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
    multi_label: bool = False  # a set of classes per image (decoded as a 0/1 vector)
    multi_hot: bool = False  # the column stores that 0/1 vector itself, one entry per class
    stored_lists: bool = False  # the column holds a list per image (ids, names or multi-hot)


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
    found = found or [
        name
        for name, f in features.items()
        if isinstance(f, (List, LargeList)) and isinstance(f.feature, ClassLabel)
    ]
    found = found or [name for name in CONVENTIONAL_LABELS if name in features]
    lists = [name for name, f in features.items() if is_label_list(f)]
    found = found or (lists if len(lists) == 1 else [])  # the one column of label lists
    if found:
        return found[0]
    if required:
        check_labelled_folder(features, dataset)
        raise ValueError(
            f"dataset {describe(dataset)} has no label column (no ClassLabel feature, no column "
            f"named {' or '.join(CONVENTIONAL_LABELS)}, not one column of label lists); "
            f"columns: {overview(features)}; "
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


def is_label_list(feature) -> bool:
    """A list per row of categorical values, bools or floats (multi-label)."""
    if not isinstance(feature, (List, LargeList)):
        return False
    inner = feature.feature
    return is_categorical(inner) or (
        isinstance(inner, Value) and (inner.dtype == "bool" or inner.dtype.startswith("float"))
    )


def resolve_columns(
    features: Features,
    dataset: Source,
    image_column: str | None,
    label_column: str | None,
    label_values: Callable[[str], Iterable[Any]],
    labels_required: bool = True,
    label_sets: bool | None = None,
) -> Columns:
    """The image and label columns and the class names. ``label_values(column)`` yields every raw
    label (of all splits, a list per row for a list column); it is only called for string,
    integer and list columns. ``label_sets``: None follows the column (see the module)."""
    image = find_image_column(features, dataset, image_column)
    label = find_label_column(features, dataset, label_column, labels_required)
    if label is None:
        return Columns(image, None, (), None)
    feature = features[label]
    if is_label_list(feature):
        return list_columns(image, label, feature, label_values, label_sets, dataset)
    if not is_categorical(feature):
        raise ValueError(
            f"label_column={label!r} of dataset {describe(dataset)} is not categorical: it is "
            f"{overview(features)[label]}; expected a ClassLabel, string or integer column, or a "
            f"list of them per image (multi-label); columns: {overview(features)}"
        )
    sets = bool(label_sets)  # plain labels as one-class sets when label_sets=True
    if isinstance(feature, ClassLabel):
        return Columns(image, label, tuple(feature.names), None, multi_label=sets)
    values = sorted({v for v in label_values(label) if v is not None})
    return Columns(
        image,
        label,
        tuple(str(v) for v in values),
        {v: i for i, v in enumerate(values)},
        multi_label=sets,
    )


def list_columns(
    image: str,
    label: str,
    feature,
    label_values: Callable[[str], Iterable[Any]],
    label_sets: bool | None,
    dataset: Source,
) -> Columns:
    """Columns of a list label column: class ids, names, or multi-hot vectors (see the module)."""
    inner = feature.feature
    sets = label_sets is not False
    if isinstance(inner, ClassLabel):
        return Columns(image, label, tuple(inner.names), None, sets, stored_lists=True)
    rows = [row for row in label_values(label) if row is not None]
    if is_multi_hot(inner, getattr(feature, "length", -1), rows):
        width = len(rows[0]) if rows else max(getattr(feature, "length", -1), 0)
        if any(len(row) != width for row in rows):
            raise ValueError(
                f"label_column={label!r} of dataset {describe(dataset)} holds multi-hot vectors "
                f"of different lengths {sorted({len(row) for row in rows})[:5]}; expected one "
                "entry per class in every row"
            )
        names = tuple(str(i) for i in range(width))
        return Columns(image, label, names, None, sets, multi_hot=True, stored_lists=True)
    values = sorted({v for row in rows for v in row if v is not None})
    ids = {v: i for i, v in enumerate(values)}
    return Columns(image, label, tuple(str(v) for v in values), ids, sets, stored_lists=True)


def is_multi_hot(inner: Value, length: int, rows: list[list]) -> bool:
    """Whether list rows are 0/1 vectors rather than lists of class ids: bool or float values, a
    fixed length, or integer rows of one length, all 0 or 1, of which one repeats a value."""
    if inner.dtype == "bool" or inner.dtype.startswith("float"):
        return True
    if not inner.dtype.startswith(("int", "uint")):
        return False
    if length is not None and length > 0:
        return True
    if not rows or len({len(row) for row in rows}) != 1 or len(rows[0]) < 2:
        return False
    flat = np.asarray(rows)
    return bool(np.isin(flat, (0, 1)).all()) and any(len(set(row)) < len(row) for row in rows)
