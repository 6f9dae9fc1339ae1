"""Multi-label columns: which label columns make sets of classes, how each kind is read, and
the errors a wrong label gets. The expected rows are written out by hand."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from nat_lightning.data import HFImageDataModule
from nat_lightning.data.columns import resolve_columns
from nat_lightning.data.images import Collate
from nat_lightning.data.labels import LabelError, LabelReader

IGNORE = -100


def png(value: int) -> dict:
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), (value, 0, 0)).save(buffer, "PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def columns_of(labels: list, feature=None, label_sets=None, name="tags"):
    if feature is None:
        data = Dataset.from_dict({"image": [png(i) for i in range(len(labels))], name: labels})
        data = data.cast_column("image", Image())
    else:
        features = Features({"image": Image(), name: feature})
        data = Dataset.from_dict(
            {"image": [png(i) for i in range(len(labels))], name: labels}, features
        )
    return resolve_columns(
        data.features, data, None, None, lambda c: data[c], label_sets=label_sets
    ), data


def read_all(columns, data) -> np.ndarray:
    reader = LabelReader(columns)
    return np.array([reader(row) for row in data.select_columns([columns.label])])


def test_a_list_of_classlabel_ids_is_multi_label_with_its_names():
    feature = List(ClassLabel(names=["cat", "dog", "car"]))
    columns, data = columns_of([[0, 2], [], [1]], feature)
    assert columns.multi_label and columns.names == ("cat", "dog", "car")
    assert read_all(columns, data).tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


def test_lists_of_names_are_found_without_label_column_and_named_sorted():
    columns, data = columns_of([["sky", "tree"], ["tree"], ["car", "sky"]])
    assert columns.label == "tags" and columns.multi_label  # the one column of label lists
    assert columns.names == ("car", "sky", "tree")
    assert read_all(columns, data).tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 0]]


def test_integer_lists_that_never_repeat_are_class_ids():
    columns, data = columns_of([[3, 1], [1], []])
    assert not columns.multi_hot and columns.names == ("1", "3")
    assert read_all(columns, data).tolist() == [[1, 1], [1, 0], [0, 0]]


@pytest.mark.parametrize(
    ("rows", "feature"),
    [
        ([[1, 0, 1], [0, 0, 1]], None),  # ints of one length that repeat a value
        ([[True, False, True], [False, False, True]], None),  # bools
        ([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]], None),  # floats
        ([[1, 0, 1], [0, 1, 0]], List(Value("int64"), length=3)),  # a fixed length
    ],
)
def test_multi_hot_rows_are_read_as_they_are(rows, feature):
    columns, data = columns_of(rows, feature)
    assert columns.multi_hot and columns.names == ("0", "1", "2")
    assert read_all(columns, data).tolist() == [[int(v) for v in row] for row in rows]


def test_label_sets_true_reads_plain_labels_as_one_class_sets():
    feature = ClassLabel(names=["a", "b", "c"])
    columns, data = columns_of([2, 0, -1], feature, label_sets=True, name="label")
    assert columns.multi_label
    assert read_all(columns, data).tolist() == [[0, 0, 1], [1, 0, 0], [IGNORE] * 3]


def test_label_sets_false_reads_one_class_lists_and_refuses_others():
    columns, data = columns_of([["b"], ["a"], ["a", "b"]], label_sets=False)
    reader = LabelReader(columns)
    assert not columns.multi_label
    assert [reader(data[i]) for i in range(2)] == [1, 0]
    with pytest.raises(LabelError, match=r"holding 2 classes \['a', 'b'\].*label_sets=False"):
        reader(data[2])


def test_a_missing_label_is_an_ignored_row_and_an_empty_list_is_no_class():
    columns, data = columns_of([["a"], None, []])
    assert read_all(columns, data).tolist() == [[1], [IGNORE], [0]]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([0, 5], r"holds ids \[5\]; expected class ids in 0..2"),
        ([-1], r"holds ids \[-1\]"),
    ],
)
def test_classlabel_ids_outside_the_classes_name_the_column_and_the_ids(value, message):
    feature = List(ClassLabel(names=["cat", "dog", "car"]))
    columns, _ = columns_of([[0]], feature)
    with pytest.raises(LabelError, match=r"label_column='tags'.*" + message):
        LabelReader(columns)({"tags": value})


def test_a_multi_hot_row_of_another_length_is_refused():
    columns, _ = columns_of([[1, 0, 1], [0, 0, 1]])
    with pytest.raises(LabelError, match=r"has 2 entries; expected 3, one per class"):
        LabelReader(columns)({"tags": [1, 0]})


def test_multi_hot_vectors_of_different_lengths_are_refused_at_resolution():
    with pytest.raises(ValueError, match=r"multi-hot vectors of different lengths \[2, 3\]"):
        columns_of([[True, False], [True, False, False]])


def test_a_name_the_data_does_not_hold_is_refused():
    columns, _ = columns_of([["a"], ["b"]])
    with pytest.raises(LabelError, match=r"names unknown classes \['zebra'\]"):
        LabelReader(columns)({"tags": ["zebra"]})


def test_a_bad_row_is_named_by_the_decoder(tmp_path):
    data = Dataset.from_dict(
        {"image": [png(1), png(2)], "tags": [[1.0, 0.0, 1.0], [1.0, 1.0]]},
        Features({"image": Image(), "tags": List(Value("float32"))}),
    )
    with pytest.raises(ValueError, match="different lengths"):  # read ahead: refused at once
        HFImageDataModule(data, image_size=8, val_split=None).num_classes
    data = Dataset.from_dict(
        {"image": [png(1), png(2)], "tags": [["a"], ["b"]]},
        Features({"image": Image(), "tags": List(Value("string"))}),
    )
    dm = HFImageDataModule(data, image_size=8, val_split=None, label_sets=False)
    dm.setup("fit")
    dm.train_dataloader().dataset[0]
    dm.train_dataloader().dataset.rows  # (the rows are those of the split)
    broken = Dataset.from_dict(
        {"image": [png(1), png(2)], "tags": [["a"], ["a", "b"]]},
        Features({"image": Image(), "tags": List(Value("string"))}),
    )
    dm = HFImageDataModule(broken, image_size=8, val_split=None, label_sets=False)
    dm.setup("fit")
    with pytest.raises(LabelError, match=r"row 1: label_column='tags'.*holding 2 classes"):
        dm.train_dataloader().dataset[1]


def test_collate_stacks_rows_and_pads_with_ignored_rows():
    collate = Collate(8, num_labels=3)
    items = [{"pixel_values": np.zeros((3, 8, 8), np.float32), "labels": np.array([1, 0, 1])}]
    unlabelled = [{"pixel_values": np.zeros((3, 8, 8), np.float32), "labels": IGNORE}]
    assert collate(items)["labels"].tolist() == [[1, 0, 1]]
    assert collate(unlabelled)["labels"].tolist() == [[IGNORE] * 3]
    assert collate([])["labels"].shape == (0, 3)
    padding = collate.padding(None, 2)["labels"]
    assert padding.dtype == torch.int64 and padding.tolist() == [[IGNORE] * 3] * 2


def test_the_datamodule_gives_0_1_rows_and_counts_positives():
    names = ["even", "big", "loop"]
    sets = [[0, 2], [1], [], [0, 1, 2], [0], [2]]
    data = Dataset.from_dict(
        {"image": [png(i) for i in range(6)], "tags": sets},
        Features({"image": Image(), "tags": List(ClassLabel(names=names))}),
    )
    dm = HFImageDataModule(data, image_size=8, val_split=None, batch_size=6, num_workers=0)
    dm.setup("fit")
    assert dm.multi_label and dm.num_classes == 3
    expected = np.zeros((6, 3), np.int64)
    for row, classes in enumerate(sets):
        expected[row, classes] = 1
    assert dm.train_label_sets().tolist() == expected.tolist()
    assert dm.label_counts() == expected.sum(0).tolist()
    with pytest.raises(ValueError, match="sampler='balanced'.*multi-label"):
        dm.train_classes()
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape == (6, 3) and set(batch["labels"].unique().tolist()) <= {0, 1}


def test_folds_of_multi_label_data_deal_each_label_set_evenly():
    names = ["a", "b"]
    sets = [[0]] * 6 + [[1]] * 6 + [[0, 1]] * 6
    data = Dataset.from_dict(
        {"image": [png(i) for i in range(18)], "tags": sets},
        Features({"image": Image(), "tags": List(ClassLabel(names=names))}),
    )
    seen = []
    for fold in range(3):
        dm = HFImageDataModule(data, image_size=8, folds=3, fold=fold, seed=1)
        val = dm.splits["val"].data["tags"]
        assert sorted(map(tuple, val)) == [(0,)] * 2 + [(0, 1)] * 2 + [(1,)] * 2
        seen += [tuple(v) for v in val]
    assert len(seen) == 18


def test_a_stream_reads_the_label_sets_map_style_reads():
    sets = [[k % 3] for k in range(3)] + [[], [0, 1, 2], [1, 2]] * 3
    data = Dataset.from_dict(
        {"image": [png(i) for i in range(12)], "tags": sets},
        Features({"image": Image(), "tags": List(ClassLabel(names=["a", "b", "c"]))}),
    )
    read = {}
    for streaming in (False, True):
        dm = HFImageDataModule(
            data, image_size=8, val_split=None, test_split="train", batch_size=5,
            streaming=streaming, num_workers=0,
        )  # fmt: skip
        dm.setup("test")
        read[streaming] = torch.cat([b["labels"] for b in dm.test_dataloader()]).tolist()
    expected = [[int(c in row) for c in range(3)] for row in sets]
    assert read[False] == expected
    # a stream pads its last batch to the even length every rank shares; padding rows are ignored
    assert read[True][:12] == expected
    assert all(row == [-100] * 3 for row in read[True][12:])
