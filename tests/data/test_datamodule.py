"""HFImageDataModule end to end on tiny data: map-style and streaming batches, labels, splits,
predict ids, preprocessing settings, and the errors for bad input."""

import json
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    IterableDatasetDict,
    SplitDict,
    SplitInfo,
    Value,
    load_dataset,
)

from nat_lightning.data import DIGITS_PARQUET, HFImageDataModule, sources

from .conftest import PLAIN, colour_of, coloured, id_of, png, quiet_trainer, write_images

FEATURES = coloured([]).features  # of every coloured dataset


def examples(loader) -> list[tuple[int, int]]:
    """(id, label) of every real example a loader yields."""
    return [
        (id_of(p), int(label))
        for b in loader
        for p, label in zip(b["pixel_values"], b["labels"])
        if label >= 0
    ]


def on_rank(dm: HFImageDataModule, rank: int, world: int) -> HFImageDataModule:
    dm.trainer = SimpleNamespace(
        global_rank=rank, world_size=world, current_epoch=0
    )  # what the loaders read
    return dm


def test_embedded_digits_are_read_like_any_parquet():
    from sklearn.datasets import load_digits

    dm = HFImageDataModule(**PLAIN)  # dataset=None: the embedded digits
    assert DIGITS_PARQUET.endswith("digits.parquet")
    assert dm.num_classes == 10 and dm.id2label == {i: str(i) for i in range(10)}
    rows, digits = dm.all_splits["train"], load_digits()
    assert rows.num_rows == 1797 and rows.features["label"] == ClassLabel(
        names=[str(i) for i in range(10)]
    )
    assert rows["label"] == digits.target.tolist()
    for i in (0, 1000, 1796):  # PNG pixels are the 0..16 values scaled to 0..255
        np.testing.assert_array_equal(
            np.asarray(rows[i]["image"]), np.rint(digits.images[i] * 255 / 16)
        )
    assert {role: split.size for role, split in dm.splits.items()} == {
        "train": 1617,
        "val": 180,
    }  # 10 % held out


def test_map_style_batches(coloured_dict):
    dm = HFImageDataModule(coloured_dict, **PLAIN)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (
        batch["pixel_values"].shape == (8, 3, 8, 8) and batch["pixel_values"].dtype == torch.float32
    )
    assert batch["labels"].dtype == torch.int64 and batch["num_skipped"] == 0
    train = examples(dm.train_dataloader())
    assert sorted(train) == [
        (i, i % 4) for i in range(37)
    ]  # every example once, with its own label
    assert sorted(examples(dm.val_dataloader())) == [(i, i % 4) for i in range(100, 111)]


def test_streaming_batches_match_map_style(coloured_dict):
    dm = HFImageDataModule(coloured_dict, streaming=True, **{**PLAIN, "num_workers": 2})
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader)
    assert all(
        b["pixel_values"].dtype == torch.float32 and b["pixel_values"].shape[1:] == (3, 8, 8)
        for b in batches
    )
    assert sorted(examples(batches)) == [(i, i % 4) for i in range(37)]
    assert sorted(examples(dm.val_dataloader())) == [(i, i % 4) for i in range(100, 111)]


def test_label_names_survive_parquet_and_imagefolder(tmp_path, imagefolder):
    coloured(range(12), num_classes=3).to_parquet(str(tmp_path / "data.parquet"))
    assert HFImageDataModule(str(tmp_path / "data.parquet"), **PLAIN).id2label == {
        0: "a",
        1: "b",
        2: "c",
    }
    dm = HFImageDataModule(str(imagefolder), **PLAIN)
    assert dm.id2label == {0: "cat", 1: "dog"}
    dm.setup("fit")
    expected = [(i, 0) for i in range(7)] + [(50 + i, 1) for i in range(7)]
    assert sorted(examples(dm.train_dataloader())) == expected
    assert sorted(examples(dm.val_dataloader())) == [(200, 0), (201, 0), (250, 1), (251, 1)]


def test_string_labels_become_sorted_ids():
    kinds = ["zebra", "ant", "zebra", "bee", "ant", "bee", "ant", "bee"]
    data = Dataset.from_dict(
        {"image": [{"bytes": png(colour_of(i)), "path": None} for i in range(8)], "kind": kinds},
        features=Features({"image": Image(), "kind": Value("string")}),
    )
    dm = HFImageDataModule(data, label_column="kind", val_split=None, **PLAIN)
    assert dm.id2label == {0: "ant", 1: "bee", 2: "zebra"}
    dm.setup("fit")
    assert sorted(examples(dm.train_dataloader())) == [
        (i, ["ant", "bee", "zebra"].index(k)) for i, k in enumerate(kinds)
    ]
    assert dm.val_dataloader() == []  # val_split=None: no validation


def test_seeded_validation_split_is_deterministic_and_disjoint(coloured_dataset):
    def ids(seed):
        dm = HFImageDataModule(coloured_dataset, seed=seed, val_fraction=0.25, **PLAIN)
        dm.setup("fit")
        return sorted(i for i, _ in examples(dm.train_dataloader())), sorted(
            i for i, _ in examples(dm.val_dataloader())
        )

    train, val = ids(1)
    assert len(val) == 10 and not set(train) & set(val) and sorted(train + val) == list(range(40))
    assert ids(1) == (train, val) and ids(2)[1] != val


def test_columns_by_name():
    data = coloured(range(6)).rename_columns({"img": "photo", "target": "fine"})
    data = data.add_column("coarse", [0] * 6).cast_column("coarse", ClassLabel(names=["all"]))
    dm = HFImageDataModule(data, image_column="photo", label_column="fine", val_split=None, **PLAIN)
    assert dm.id2label == {0: "a", 1: "b", 2: "c", 3: "d"}
    assert sorted(examples(dm.train_dataloader())) == [(i, i % 4) for i in range(6)]
    assert HFImageDataModule(data, **PLAIN).id2label == {
        0: "a",
        1: "b",
        2: "c",
        3: "d",
    }  # the first ClassLabel


def test_predict_on_paths_and_on_a_split(imagefolder, coloured_dict):
    dm = HFImageDataModule(
        str(imagefolder), predict_paths=str(imagefolder / "train" / "dog"), **PLAIN
    )
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["ids"] == [str(imagefolder / "train" / "dog" / f"{i}.png") for i in range(7)]
    assert [id_of(p) for p in batch["pixel_values"]] == list(range(50, 57))
    dm = HFImageDataModule(coloured_dict, predict_split="validation", **PLAIN)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert [i for b in batches for i in b["ids"]] == list(range(11))  # row indices, in order
    assert [id_of(p) for b in batches for p in b["pixel_values"]] == list(range(100, 111))


def test_predict_batches_list_every_input_and_which_decoded(tmp_path, coloured_dict):
    files = {"0.png": 10, "1.png": "zero-byte", "2.png": "truncated", "3.png": "zero-byte"}
    paths = write_images(tmp_path / "in", {**files, "4.png": 14})
    dm = HFImageDataModule(
        coloured_dict, predict_paths=str(tmp_path / "in"), **{**PLAIN, "batch_size": 2}
    )
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert [b["ids"] for b in batches] == [paths[0:2], paths[2:4], paths[4:]]
    assert [b["decoded"] for b in batches] == [[True, False], [False, False], [True]]
    assert [[id_of(p) for p in b["pixel_values"]] for b in batches] == [[10], [], [14]]
    assert batches[1]["pixel_values"].shape == (0, 3, 8, 8)  # a batch of undecodable files only
    assert [b["skipped_names"] for b in batches] == [paths[1:2], paths[2:4], []]

    data = coloured_dict["validation"].to_dict()
    for row in (2, 5):
        data["img"][row] = {"bytes": b"not an image", "path": None}
    corrupt = DatasetDict(
        {**coloured_dict, "validation": Dataset.from_dict(data, features=FEATURES)}
    )
    dm = HFImageDataModule(corrupt, predict_split="validation", **PLAIN)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert [i for b in batches for i in b["ids"]] == list(range(11))  # every row, in order
    assert [ok for b in batches for ok in b["decoded"]] == [i not in (2, 5) for i in range(11)]
    assert [id_of(p) for b in batches for p in b["pixel_values"]] == [
        100 + i for i in range(11) if i not in (2, 5)
    ]
    assert [n for b in batches for n in b["skipped_names"]] == ["row 2", "row 5"]


def test_predicting_on_a_hub_stream_keeps_the_undecodable_rows(tmp_path, monkeypatch):
    fake_hub(tmp_path, monkeypatch, {"train": [3], "validation": [4, 3]}, broken={4, 8})
    ids, decoded, pixels = [], [], []
    for rank in range(2):
        dm = HFImageDataModule(
            "someone/coloured", streaming=True, predict_split="validation", **PLAIN
        )
        for batch in on_rank(dm, rank, 2).predict_dataloader():
            ids += batch["ids"]
            decoded += batch["decoded"]
            pixels += [id_of(p) for p in batch["pixel_values"]]
    assert sorted(zip(ids, decoded)) == [(row, row + 3 not in (4, 8)) for row in range(7)]
    assert sorted(pixels) == [3, 5, 6, 7, 9]  # validation ids 3..9 minus the broken 4 and 8


CONFIG = {  # a preprocessor_config.json, and what it means to the data module
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.25, 0.25, 0.25],
    "crop_pct": 0.9,
    "size": {"height": 12, "width": 12},
}
FROM_CONFIG = {"image_size": 12, "crop_pct": 0.9, "mean": (0.5,) * 3, "std": (0.25,) * 3}
PARTIAL_CONFIG = {"size": {"shortest_edge": 14}}  # ConvNeXt style: only the size (below 384)
MODULE = {"image_size": 16, "crop_pct": 0.8, "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}
ARGUMENTS = {"image_size": 20, "crop_pct": 0.7, "mean": (0.7, 0.7, 0.7), "std": (0.9, 0.9, 0.9)}
BUILT_IN = {"image_size": 224, "crop_pct": 0.875, "mean": (0.485, 0.456, 0.406)}
BUILT_IN["std"] = (0.229, 0.224, 0.225)


@pytest.mark.parametrize(
    "given", [(), ("image_size",), ("crop_pct", "std"), ("image_size", "crop_pct", "mean", "std")]
)
@pytest.mark.parametrize("config", [None, "full", "partial"])
@pytest.mark.parametrize("module", [False, True])
def test_preprocessing_precedence(tmp_path, given, config, module):
    """An argument > the preprocessor_config > the LightningModule's defaults > built-in, per key;
    every source has its own values, so each expected value names the source that must win."""
    file = {"full": CONFIG, "partial": PARTIAL_CONFIG}.get(config)
    if file is not None:
        (tmp_path / "preprocessor_config.json").write_text(json.dumps(file))
    dm = HFImageDataModule(
        preprocessor_config=str(tmp_path) if file else None,
        **{key: ARGUMENTS[key] for key in given},
    )
    resolved = dm.resolve_preprocessing(MODULE if module else None)
    for key, built_in in BUILT_IN.items():
        if key in given:
            expected = ARGUMENTS[key]
        elif config == "full":
            expected = FROM_CONFIG[key]
        elif config == "partial" and key == "image_size":
            expected = 14
        else:
            expected = MODULE[key] if module else built_in
        assert resolved[key] == getattr(dm, key) == dm.hparams[key] == expected, key


def test_preprocessing_before_setup_and_the_first_source_that_gives_a_value_keeps_it(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PARTIAL_CONFIG))
    dm = HFImageDataModule(preprocessor_config=str(tmp_path), crop_pct=0.5)
    # no setup, no trainer: the arguments, the config and the built-in defaults
    assert (dm.image_size, dm.crop_pct, dm.mean, dm.std) == (
        14,
        0.5,
        BUILT_IN["mean"],
        BUILT_IN["std"],
    )
    assert dm.val_dataloader().collate_fn.image_size == 14
    dm.resolve_preprocessing({"mean": (0.2, 0.2, 0.2)})  # fills a built-in value...
    dm.resolve_preprocessing({"mean": (0.3, 0.3, 0.3), "std": [0.5, 0.5, 0.5]})  # ...only once
    assert (dm.mean, dm.std) == ((0.2, 0.2, 0.2), (0.5, 0.5, 0.5))
    assert HFImageDataModule().resolve_preprocessing() == BUILT_IN


@pytest.mark.parametrize(
    "defaults,message",
    [
        ({"crop_pct": 1.5}, r"crop_pct=1.5 from defaults: expected in \(0, 1\] or None"),
        ({"std": (1.0, 0.0, 1.0)}, r"std=\(1.0, 0.0, 1.0\) from defaults: expected 3 positive"),
        ({"size": 224}, r"defaults has keys \['size'\]: expected only \['crop_pct', 'image_size'"),
    ],
)
def test_bad_preprocessing_defaults(defaults, message):
    with pytest.raises(ValueError, match=message):
        HFImageDataModule().resolve_preprocessing(defaults)


def test_a_bad_preprocessor_config_value_names_the_file(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"crop_pct": 0.0}))
    with pytest.raises(
        ValueError, match=r"crop_pct=0.0 from preprocessor_config='.*': expected in \(0, 1\]"
    ):
        HFImageDataModule(preprocessor_config=str(tmp_path))


class Module(L.LightningModule):
    """Offers preprocessing defaults, as NatClassifier does, and records the batch sizes."""

    def __init__(self, preprocessing):
        super().__init__()
        self.preprocessing = preprocessing
        self.layer = torch.nn.Linear(3, 4)
        self.sides, self.ids = [], []

    def training_step(self, batch, batch_idx):
        self.sides.append(batch["pixel_values"].shape[-1])
        self.ids += [id_of(p + 0.5) for p in batch["pixel_values"]]  # mean 0.5 taken off
        return self.layer(batch["pixel_values"].mean(dim=(2, 3))).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_setup_takes_the_modules_defaults_and_checkpoints_keep_the_result(tmp_path, coloured_dict):
    settings = {k: v for k, v in PLAIN.items() if k not in ("image_size", "mean")}
    dm = HFImageDataModule(coloured_dict, val_split=None, **settings)
    assert dm.image_size == 224 and dm.hparams.mean == BUILT_IN["mean"]  # before setup
    module = Module({"image_size": 12, "mean": (0.5, 0.5, 0.5), "std": (2.0, 2.0, 2.0)})
    trainer = quiet_trainer(default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert set(module.sides) == {12} and sorted(module.ids) == list(range(37))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["datamodule_hyper_parameters"]
    assert {key: saved[key] for key in BUILT_IN} == {
        "image_size": 12,  # the module's
        "crop_pct": 1.0,  # the arguments'
        "mean": (0.5, 0.5, 0.5),  # the module's
        "std": (1.0, 1.0, 1.0),  # the argument beats the module
    }


def test_in_memory_datasets_stay_out_of_the_hyperparameters(coloured_dataset):
    assert HFImageDataModule(coloured_dataset).hparams.dataset.startswith("<in-memory Dataset")
    assert (
        HFImageDataModule().hparams.dataset is None
        and HFImageDataModule("a/b").hparams.dataset == "a/b"
    )


def fake_hub(tmp_path, monkeypatch, sizes: dict[str, list[int]], broken=frozenset()):
    """A Hub id whose splits stream from parquet files of uneven sizes; ids count up; the images
    of the ids in ``broken`` do not decode."""
    streams, start = {}, 0
    for split, file_sizes in sizes.items():
        files = []
        for k, n in enumerate(file_sizes):
            files.append(str(tmp_path / f"{split}-{k}.parquet"))
            rows = coloured(range(start, start + n)).to_dict()
            for k in broken & set(range(start, start + n)):
                rows["img"][k - start] = {"bytes": b"not an image", "path": None}
            Dataset.from_dict(rows, features=FEATURES).to_parquet(files[-1])
            start += n
        stream = load_dataset("parquet", data_files=files, split="train", streaming=True)
        stream.info.splits = SplitDict(
            {"train": SplitInfo(name="train", num_examples=sum(file_sizes))}
        )  # Hub metadata
        streams[split] = stream
    monkeypatch.setattr(sources, "load_hub", lambda *args: IterableDatasetDict(streams))


def test_hub_stream_across_ranks(tmp_path, monkeypatch):
    fake_hub(tmp_path, monkeypatch, {"train": [9, 2, 14, 5], "validation": [4, 3]})
    settings = {**PLAIN, "num_workers": 2, "batch_size": 3}
    seen, lengths = {"train": [], "val": []}, {"train": set(), "val": set()}
    for rank in range(2):
        dm = on_rank(HFImageDataModule("someone/coloured", streaming=True, **settings), rank, 2)
        assert dm.id2label == {0: "a", 1: "b", 2: "c", 3: "d"}
        for role, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
            batches = list(loader)
            lengths[role].add(len(batches))
            assert len(batches) == len(loader)
            seen[role] += examples(batches)
    assert len(lengths["train"]) == len(lengths["val"]) == 1  # ranks in step
    assert sorted(seen["train"]) == [(i, i % 4) for i in range(30)]
    assert sorted(seen["val"]) == [(i, i % 4) for i in range(30, 37)]


def test_predicting_on_a_hub_stream_labels_rows_by_index(tmp_path, monkeypatch):
    fake_hub(tmp_path, monkeypatch, {"train": [3], "validation": [4, 3]})  # validation ids 3..9
    seen = {}
    for rank in range(2):
        dm = HFImageDataModule(
            "someone/coloured", streaming=True, predict_split="validation", **PLAIN
        )
        for batch in on_rank(dm, rank, 2).predict_dataloader():
            seen.update(zip(batch["ids"], (id_of(p) for p in batch["pixel_values"])))
    assert seen == {row: 3 + row for row in range(7)}  # every row once, under its own index


def test_no_validation_can_be_held_out_of_a_hub_stream(tmp_path, monkeypatch):
    fake_hub(tmp_path, monkeypatch, {"train": [5]})
    with pytest.raises(
        ValueError,
        match=r"'someone/coloured' is streamed and has no validation split.*val_split=None",
    ):
        HFImageDataModule("someone/coloured", streaming=True).setup("fit")
    assert (
        HFImageDataModule("someone/coloured", streaming=True, val_split=None).val_dataloader() == []
    )


def test_bad_inputs_name_the_dataset_the_column_or_split_and_the_options(
    coloured_dict, coloured_dataset
):
    with pytest.raises(
        ValueError, match=r"has no image column.*columns: \{'target': 'ClassLabel'\}"
    ):
        _ = HFImageDataModule(coloured_dataset.remove_columns("img")).num_classes
    floats = coloured_dataset.cast_column("target", Value("float32"))
    with pytest.raises(
        ValueError,
        match=r"label_column='target' of dataset <in-memory Dataset, 40 rows> is not "
        r"categorical: it is Value\(float32\)",
    ):
        _ = HFImageDataModule(floats, label_column="target").num_classes
    with pytest.raises(
        ValueError,
        match=r"train_split='training' does not exist in dataset <in-memory DatasetDict.*"
        r"available splits: \['train', 'validation'\]",
    ):
        _ = HFImageDataModule(coloured_dict, train_split="training").num_classes
    with pytest.raises(
        ValueError,
        match=r"test needs data: test_split=None; set test_split to one of the splits "
        r"of dataset .*\['train', 'validation'\]",
    ):
        HFImageDataModule(coloured_dict).test_dataloader()
    with pytest.raises(
        ValueError, match=r"test_split='test' does not exist.*\['train', 'validation'\]"
    ):
        HFImageDataModule(coloured_dict, test_split="test").setup("test")
    with pytest.raises(
        ValueError,
        match=r"predict needs data: predict_split=None; set predict_split or predict_paths",
    ):
        HFImageDataModule(coloured_dict).predict_dataloader()
    with pytest.raises(
        ValueError, match=r"train_split='train' of dataset <in-memory Dataset, 0 rows> is empty"
    ):
        HFImageDataModule(coloured_dataset.select([])).setup("fit")
    with pytest.raises(
        ValueError, match=r"'/nowhere/x.parquet' does not exist \(nor does '/nowhere'\)"
    ):
        _ = HFImageDataModule("/nowhere/x.parquet").num_classes
    with pytest.raises(
        ValueError, match=r"could not load dataset='someone/beans-nowhere'.*HF_HUB_OFFLINE=1"
    ):
        _ = HFImageDataModule("someone/beans-nowhere").num_classes


@pytest.mark.parametrize(
    "argument,message",
    [
        ({"val_fraction": 1.5}, r"val_fraction=1.5: expected in \(0, 1\)"),
        ({"crop_pct": 0.0}, r"crop_pct=0.0: expected in \(0, 1\]"),
        ({"crop_scale": (0.9, 0.1)}, r"crop_scale=\(0.9, 0.1\): expected \(low, high\)"),
        ({"hflip": 2.0}, r"hflip=2.0: expected a probability"),
        ({"rand_augment_magnitude": 11}, r"rand_augment_magnitude=11: expected in \[0, 10\]"),
        ({"batch_size": 0}, r"batch_size=0: expected >= 1"),
        ({"num_workers": -1}, r"num_workers=-1: expected >= 0 or None"),
        (
            {"predict_split": "train", "predict_paths": "x"},
            r"predict_split='train' and predict_paths='x': expected at most one",
        ),
    ],
)
def test_arguments_out_of_range(argument, message):
    with pytest.raises(ValueError, match=message):
        HFImageDataModule(**argument)
