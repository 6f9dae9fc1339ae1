"""The embedded shapes dataset: what the default HFSegmentationDataModule reads, and that the
shipped files are what scripts/make_shapes_parquet.py writes."""

import importlib.util
from pathlib import Path

import numpy as np

from nat_lightning.data import (
    SHAPES_CLASSES,
    SHAPES_DATASET,
    HFSegmentationDataModule,
    shapes_datamodule,
)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_shapes_parquet.py"


def generator():
    spec = importlib.util.spec_from_file_location("make_shapes_parquet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_default_dataset_is_the_shapes_with_their_classes_and_splits():
    dm = HFSegmentationDataModule()
    assert dm.id2label == dict(enumerate(SHAPES_CLASSES))
    assert SHAPES_CLASSES == ("background", "circle", "square", "triangle", "ring")
    assert {role: split.size for role, split in dm.splits.items()} == {"train": 320, "val": 80}
    assert sum(f.stat().st_size for f in Path(SHAPES_DATASET).glob("*.parquet")) < 2_000_000
    for split in dm.all_splits.values():
        present = np.zeros(len(SHAPES_CLASSES), dtype=int)
        for row in split.select(range(40)):
            image, mask = np.asarray(row["image"]), np.asarray(row["annotation"])
            assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
            assert sorted(np.unique(mask).tolist()) == row["classes"]
            present[np.unique(mask)] += 1
        assert (present > 0).all()  # every class in the first 40 pairs of each split


def test_the_shipped_pairs_are_the_generators():
    rows = generator().shapes_split(3, seed=0)  # the train split's first 3 of its 320
    shipped = HFSegmentationDataModule().all_splits["train"].select(range(3))
    for made, stored in zip(rows, shipped):
        np.testing.assert_array_equal(
            np.asarray(made["annotation"]), np.asarray(stored["annotation"])
        )
        np.testing.assert_array_equal(np.asarray(made["image"]), np.asarray(stored["image"]))


def test_the_quickstart_batches():
    dm = shapes_datamodule()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (16, 3, 64, 64) and batch["labels"].shape == (16, 64, 64)
    assert set(batch["labels"].unique().tolist()) <= {0, 1, 2, 3, 4, 255}
    val = next(iter(dm.val_dataloader()))
    assert val["sizes"].tolist() == [[64, 64]] * 16 and (val["labels"] != 255).all()
