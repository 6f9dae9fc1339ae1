import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value

from nat_lightning.data import DIGITS_PARQUET, HFImageDataModule
from nat_lightning.data.examples import PAD_LABEL

from .conftest import colour_of, id_of, png

SMALL = dict(image_size=8, crop_pct=1.0, mean=(0, 0, 0), std=(1, 1, 1), num_workers=0, batch_size=8)
NO_AUG = dict(crop_scale=(1.0, 1.0), hflip=0.0, rand_augment_ops=0, color_jitter=0.0, random_erasing=0.0)


def batches(loader):
    return list(loader)


def test_embedded_digits():
    dm = HFImageDataModule(**SMALL)
    assert dm.num_classes == 10 and dm.id2label[3] == "3"
    dm.setup("fit")
    assert len(dm._data["train"]) + len(dm._data["val"]) == 1797
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 8, 8) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.int64


def test_columns_found_from_features_and_pixels_exact(coloured_dataset):
    dm = HFImageDataModule(coloured_dataset, **SMALL, **NO_AUG)
    assert dm.columns.image == "img" and dm.columns.label == "target"
    assert dm.id2label == {0: "a", 1: "b", 2: "c", 3: "d"}
    dm.setup("fit")
    for batch in batches(dm.val_dataloader()):
        for pixels, label in zip(batch["pixel_values"], batch["labels"]):
            i = id_of(pixels[:, 0, 0] * 255)
            assert label == i % 4
            torch.testing.assert_close(pixels[:, 4, 4] * 255, torch.tensor(colour_of(i), dtype=torch.float32),
                                       atol=0.6, rtol=0)


def test_seeded_validation_split_is_deterministic_and_disjoint(coloured_dataset):
    def ids(seed):
        dm = HFImageDataModule(coloured_dataset, seed=seed, val_fraction=0.25, **SMALL, **NO_AUG)
        dm.setup("fit")
        return [sorted(id_of(p[:, 0, 0] * 255) for b in batches(loader) for p in b["pixel_values"])
                for loader in (dm.train_dataloader(), dm.val_dataloader())]

    train, val = ids(1)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == list(range(40))
    assert ids(1) == [train, val] and ids(2)[1] != val


def test_imagefolder_and_parquet_sources(imagefolder, coloured_dataset, tmp_path):
    dm = HFImageDataModule(str(imagefolder), **SMALL)
    assert dm.id2label == {0: "cat", 1: "dog"}
    coloured_dataset.to_parquet(str(tmp_path / "data.parquet"))
    dm = HFImageDataModule(str(tmp_path / "data.parquet"), **SMALL)
    assert dm.num_classes == 4
    dm.setup("fit")
    assert sum(len(b["labels"]) for b in batches(dm.train_dataloader())) == 36


def test_string_labels_get_sorted_names():
    ds = Dataset.from_dict({"image": [{"bytes": png((9, 9, 9)), "path": None}] * 6,
                            "kind": ["zebra", "ant", "zebra", "bee", "ant", "bee"]},
                           features=Features({"image": Image(), "kind": Value("string")}))
    dm = HFImageDataModule(ds, label_column="kind", **SMALL)
    assert dm.id2label == {0: "ant", 1: "bee", 2: "zebra"}
    dm.setup("fit")
    labels = torch.cat([b["labels"] for b in batches(dm.train_dataloader()) + batches(dm.val_dataloader())])
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]


def test_streaming_reads_every_example_once(coloured_dataset):
    dm = HFImageDataModule(coloured_dataset, streaming=True, val_split="validation", **SMALL, **NO_AUG)
    dm.setup("fit")
    seen = []
    for batch in batches(dm.train_dataloader()) + batches(dm.val_dataloader()):
        seen += [id_of(p[:, 0, 0] * 255) for p, l in zip(batch["pixel_values"], batch["labels"]) if l != PAD_LABEL]
    assert sorted(seen) == list(range(40))


def test_streaming_shuffles_differently_per_epoch(coloured_dataset):
    dm = HFImageDataModule(coloured_dataset, streaming=True, shuffle_buffer=16, **SMALL, **NO_AUG)
    dm.setup("fit")
    orders = []
    for epoch in (0, 1):
        dm.set_epoch(epoch)
        orders.append([id_of(p[:, 0, 0] * 255) for b in batches(dm.train_dataloader()) for p in b["pixel_values"]])
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]


def test_corrupt_images_are_skipped_and_counted(coloured_dataset):
    rows = coloured_dataset.to_dict()
    for i in (3, 17, 18):
        rows["img"][i] = {"bytes": b"\x89PNG garbage", "path": None}
    broken = Dataset.from_dict(rows, features=coloured_dataset.features)
    dm = HFImageDataModule(broken, val_fraction=0.5, **SMALL, **NO_AUG)
    dm.setup("fit")
    loaded = batches(dm.train_dataloader()) + batches(dm.val_dataloader())
    assert sum(int(b["num_skipped"]) for b in loaded) == 3
    assert sum(len(b["labels"]) for b in loaded) == 37


def test_predict_on_a_folder(imagefolder):
    dm = HFImageDataModule(str(imagefolder), predict_paths=str(imagefolder / "train" / "dog"), **SMALL)
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["pixel_values"].shape[0] == 6 and batch["ids"][0].endswith("dog/0.png")


def test_preprocessor_config_sets_normalisation(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "crop_pct": 0.9}')
    dm = HFImageDataModule(preprocessor_config=str(tmp_path))
    assert dm.mean == (0.5, 0.5, 0.5) and dm.std == (0.25, 0.25, 0.25) and dm.crop_pct == 0.9
    assert HFImageDataModule().mean == (0.485, 0.456, 0.406)


def test_bad_inputs_name_the_column_or_split(coloured_dataset):
    with pytest.raises(ValueError, match="no image column.*columns: \\['target'\\]"):
        HFImageDataModule(coloured_dataset.remove_columns("img")).num_classes
    floats = coloured_dataset.cast_column("target", Value("float32"))
    with pytest.raises(ValueError, match="label_column='target'.*not categorical"):
        HFImageDataModule(floats, label_column="target").num_classes
    with pytest.raises(ValueError, match="train_split='training' does not exist.*available splits: \\['train'\\]"):
        HFImageDataModule(coloured_dataset, train_split="training").num_classes
    with pytest.raises(ValueError, match="is empty"):
        HFImageDataModule(coloured_dataset.select([])).num_classes
    with pytest.raises(ValueError, match="image_column='photo' is not in dataset"):
        HFImageDataModule(coloured_dataset, image_column="photo").num_classes
    with pytest.raises(ValueError, match="val_fraction"):
        HFImageDataModule(val_fraction=1.5)


def test_unreachable_hub_dataset_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="could not load dataset='someone/beans-nowhere'"):
        HFImageDataModule("someone/beans-nowhere").num_classes
