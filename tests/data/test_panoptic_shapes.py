"""The embedded panoptic shapes: the generator is deterministic, the shipped files are what it
writes, and every row is a consistent COCO-panoptic annotation of the described classes."""

import importlib.util
from pathlib import Path

import numpy as np

from nat_lightning.data import PANOPTIC_SHAPES_CLASSES, PANOPTIC_SHAPES_DATASET
from nat_lightning.data.panoptic import rgb_ids
from nat_lightning.data.panoptic_shapes import PANOPTIC_SHAPES_THINGS
from nat_lightning.data.universal import HFPanopticDataModule

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_panoptic_shapes.py"


def generator():
    spec = importlib.util.spec_from_file_location("make_panoptic_shapes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generator_is_deterministic():
    made = [generator().panoptic_split(4, seed=3) for _ in range(2)]
    assert made[0].data.table.equals(made[1].data.table)  # same bytes, column by column
    other = generator().panoptic_split(4, seed=4)
    assert not made[0].data.table.equals(other.data.table)


def test_the_shipped_rows_are_the_generators():
    script = generator()
    assert script.CLASSES == PANOPTIC_SHAPES_CLASSES
    assert tuple(script.CLASSES[i] for i in script.THINGS) == PANOPTIC_SHAPES_THINGS
    made = script.panoptic_split(3, seed=0)  # the train split's first 3 of its 320
    shipped = HFPanopticDataModule().all_splits["train"].select(range(3))
    for fresh, stored in zip(made, shipped):
        assert fresh["segments_info"] == stored["segments_info"]
        for column in ("image", "panoptic"):
            np.testing.assert_array_equal(np.asarray(fresh[column]), np.asarray(stored[column]))


def test_every_row_is_a_consistent_annotation_of_the_classes():
    dm = HFPanopticDataModule()
    assert dm.id2label == dict(enumerate(PANOPTIC_SHAPES_CLASSES))
    assert {role: split.size for role, split in dm.splits.items()} == {"train": 320, "val": 64}
    assert sum(f.stat().st_size for f in Path(PANOPTIC_SHAPES_DATASET).glob("*.parquet")) < 3e6
    for split in dm.all_splits.values():
        present = np.zeros(len(PANOPTIC_SHAPES_CLASSES), dtype=int)
        for row in split:
            ids = rgb_ids(np.asarray(row["panoptic"]))
            assert np.asarray(row["image"]).shape == (64, 64, 3) and ids.shape == (64, 64)
            listed = sorted(s["id"] for s in row["segments_info"])
            assert sorted(np.unique(ids).tolist()) == listed  # no void, nothing unlisted
            classes = [s["category_id"] for s in row["segments_info"]]
            assert classes.count(3) <= 1 and classes.count(4) <= 1  # one sky, one ground
            assert 2 <= len(classes) - 2 <= 5  # things
            present[classes] += 1
        assert (present > 0).all()
