"""A row's label as the model takes it: one class id, or a set of classes as a 0/1 vector.

Single-label: an int class id; IGNORE_LABEL for a row without one (a missing column, None, a
ClassLabel's -1). Multi-label (``Columns.multi_label``): a (K,) int64 vector with 1 for each class
of the image; all IGNORE_LABEL for a row without labels (None), while an empty list is a valid
"none of the classes". A value that names no class, or a list where one class is expected, is a
LabelError naming the column, the value and what was expected: a wrong label fails the run where
it is read instead of training on a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..batch import IGNORE_LABEL
from .columns import Columns


class LabelError(ValueError):
    """A label value that is not a class (or set of classes) of the data."""


class LabelReader:
    """Reads ``columns.label`` of a row (see the module). A plain picklable object."""

    def __init__(self, columns: Columns):
        self.columns = columns

    def __call__(self, row: Mapping[str, Any]) -> int | np.ndarray:
        c = self.columns
        value = None if c.label is None else row.get(c.label)  # a test split may lack it
        if not c.multi_label:
            if c.stored_lists and value is not None:
                return self._single(self._ids(value))
            return self._id(value)
        ids = None if value is None else self._ids(value) if c.stored_lists else [self._id(value)]
        if ids is None or IGNORE_LABEL in ids:  # no label at all: the row counts nowhere
            return np.full(len(c.names), IGNORE_LABEL, dtype=np.int64)
        vector = np.zeros(len(c.names), dtype=np.int64)
        vector[ids] = 1
        return vector

    def _id(self, value: Any) -> int:
        """A plain label's class id (IGNORE_LABEL for none)."""
        if self.columns.label_ids is not None:
            return self.columns.label_ids.get(value, IGNORE_LABEL)
        return IGNORE_LABEL if value is None or value < 0 else int(value)

    def _ids(self, value: Any) -> list[int]:
        """The class ids of a stored list: ClassLabel ids, names/integers or a multi-hot row."""
        c, n = self.columns, len(self.columns.names)
        if c.multi_hot:
            if len(value) != n:
                raise self._error(value, f"has {len(value)} entries", f"{n}, one per class")
            return np.flatnonzero(np.asarray(value, dtype=np.float64) > 0.5).tolist()
        if c.label_ids is not None:
            unknown = [v for v in value if v not in c.label_ids]
            if unknown:
                raise self._error(value, f"names unknown classes {unknown[:5]}", "known classes")
            return [c.label_ids[v] for v in value]
        wrong = [v for v in value if not 0 <= int(v) < n]
        if wrong:
            raise self._error(value, f"holds ids {wrong[:5]}", f"class ids in 0..{n - 1}")
        return [int(v) for v in value]

    def _single(self, ids: list[int]) -> int:
        if len(ids) != 1:
            raise LabelError(
                f"label_column={self.columns.label!r}: a label list holding {len(ids)} classes "
                f"{[self.columns.names[i] for i in ids][:5]} with label_sets="
                "False; expected exactly one class per image; leave label_sets unset to train on "
                "sets of classes (a multi-label classifier)"
            )
        return ids[0]

    def _error(self, value: Any, problem: str, expected: str) -> LabelError:
        shown = list(value)[:10]
        names = list(self.columns.names)
        return LabelError(
            f"label_column={self.columns.label!r}: the label {shown} {problem}; expected "
            f"{expected} (classes: {names[:10]}{'...' if len(names) > 10 else ''})"
        )
