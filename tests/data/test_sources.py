"""Loading every kind of source through datasets, split lookup, the held-out validation split."""

import re
from collections import Counter

import pytest
from datasets import DatasetDict, Image

from nat_lightning.data import HFImageDataModule, sources
from nat_lightning.data.sources import (
    Split,
    carve_validation,
    image_files,
    is_hub_id,
    load_splits,
    pick_split,
)

from .conftest import coloured, write_images


def test_in_memory_dataset_is_the_train_split(coloured_dataset, coloured_dict):
    assert list(load_splits(coloured_dataset)) == ["train"]
    assert load_splits(coloured_dict) is coloured_dict


def test_parquet_file_glob_and_list(tmp_path):
    coloured(range(5)).to_parquet(str(tmp_path / "a.parquet"))
    coloured(range(5, 12)).to_parquet(str(tmp_path / "b.parquet"))
    one = load_splits(str(tmp_path / "a.parquet"))
    assert list(one) == ["train"] and one["train"].num_rows == 5
    assert (
        one["train"].features == coloured(range(1)).features
    )  # Image and ClassLabel names survive
    assert load_splits(str(tmp_path / "*.parquet"))["train"].num_rows == 12
    assert (
        load_splits([str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")])["train"].num_rows
        == 12
    )


def test_arrow_file(tmp_path):
    coloured(range(6)).save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    assert load_splits(str(arrow))["train"].num_rows == 6
    assert load_splits(str(tmp_path / "saved"))["train"].num_rows == 6  # a save_to_disk folder


def test_imagefolder_with_split_folders(imagefolder):
    splits = load_splits(str(imagefolder))
    assert sorted(splits) == ["train", "validation"]
    assert splits["train"].num_rows == 14 and splits["train"].features["label"].names == [
        "cat",
        "dog",
    ]


def test_folder_of_parquet_files_named_by_split(tmp_path):
    (tmp_path / "data").mkdir()
    coloured(range(8)).to_parquet(str(tmp_path / "data" / "train-00000.parquet"))
    coloured(range(8, 11)).to_parquet(str(tmp_path / "data" / "test-00000.parquet"))
    splits = load_splits(str(tmp_path / "data"))
    assert {name: s.num_rows for name, s in splits.items()} == {"train": 8, "test": 3}


def test_paths_that_do_not_exist(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(
        ValueError, match=r"'.*missing.parquet' does not exist \('.*' holds \['notes.txt'\]\)"
    ):
        load_splits(str(tmp_path / "missing.parquet"))
    with pytest.raises(ValueError, match=r"\*.parquet' matches no file"):
        load_splits(str(tmp_path / "*.parquet"))
    (tmp_path / "x.csv").write_text("a\n1\n")
    with pytest.raises(
        ValueError, match=r"suffixes \['.csv'\]; expected .*\['.arrow', '.parquet'\]"
    ):
        load_splits(str(tmp_path / "x.csv"))


def test_hub_ids_fail_clearly_when_offline():
    with pytest.raises(
        ValueError, match="could not load dataset='someone/beans-nowhere'.*HF_HUB_OFFLINE"
    ):
        load_splits("someone/beans-nowhere")


@pytest.mark.parametrize(
    "name", ["beans", "someone/beans", "bigcode/the-stack-v1.2", "ILSVRC/imagenet-1k", "a_b/c-d.e"]
)
def test_plausible_names_are_hub_ids(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of these names exists here
    assert is_hub_id(name)


@pytest.mark.parametrize(
    "path",
    [
        "data/my_imgs",  # its first component, data, exists here
        "./imgs",
        "~/nowhere-at-all",
        "/no/such/folder",
        "a/b/c",  # more than one slash
        "imgs.zip",  # a file suffix
        "photos.PNG",
        "my images",  # not a name: a space
        "data/*.parquet",  # a glob
    ],
)
def test_local_looking_paths_fail_at_once_without_the_hub(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my_images").mkdir()

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(sources, "load_hub", no_hub)
    monkeypatch.setattr(sources, "hub_features", no_hub)
    assert not is_hub_id(path)
    expected = "matches no file or folder" if "*" in path else "does not exist"
    with pytest.raises(ValueError, match=rf"dataset={re.escape(repr(path))}: .*{expected}"):
        load_splits(path)
    with pytest.raises(ValueError, match=expected):
        _ = HFImageDataModule(path).num_classes  # the DataModule asks no Hub either


def test_a_typo_in_a_local_path_shows_what_its_folder_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "my_images").mkdir(parents=True)
    with pytest.raises(
        ValueError,
        match=r"'data/my_imgs' does not exist \('.*/data' holds \['my_images'\]\); expected an "
        r"existing folder or parquet/arrow file\(s\), or a Hub id written as 'name' or 'org/name'",
    ):
        load_splits("data/my_imgs")


@pytest.mark.parametrize(
    "files,found",
    [
        (
            ["0.png", "1.png", "2.jpg"],
            r"in no class folder\. .*: '\.' \(depth 0\): 3 image",
        ),  # flat
        (["cat/0.png", "cat/1.png"], r"named 'cat': one class.*: 'cat' \(depth 1\): 2 image"),
        (
            ["train/cat/0.png", "validation/cat/1.png", "validation/cat/2.png"],
            (
                r"named 'cat': one class.*: 'train/cat' \(depth 2\): 1 image\(s\), "
                r"'validation/cat' \(depth 2\): 2 image"
            ),
        ),
    ],
)
def test_a_folder_without_class_subfolders_says_what_it_found_and_expects(files, found, tmp_path):
    write_images(tmp_path / "images", {name: i for i, name in enumerate(files)})
    with pytest.raises(
        ValueError,
        match=rf"dataset='.*images' is an image folder without class labels: .*{found}.*"
        r"Expected one subfolder per class, at least two, .*pass them as predict_paths=",
    ) as error:
        _ = HFImageDataModule(str(tmp_path / "images")).num_classes
    assert "label_column" not in str(error.value)


def test_pick_split_lists_the_splits(coloured_dict):
    assert pick_split(coloured_dict, "validation", "d", "val_split").size == 11
    with pytest.raises(
        ValueError,
        match=r"test_split='test' does not exist in dataset 'd'; available splits: "
        r"\['train', 'validation'\]",
    ):
        pick_split(coloured_dict, "test", "d", "test_split")
    empty = DatasetDict({"train": coloured(range(3)).select([])})
    with pytest.raises(ValueError, match="train_split='train' of dataset 'd' is empty"):
        pick_split(empty, "train", "d", "train_split")


def test_held_out_validation_is_seeded_disjoint_and_stratified():
    data = coloured(range(40)).cast_column(
        "img", Image(decode=False)
    )  # labels i % 4: ten per class

    def carve(seed):
        train, val = carve_validation(Split("train", data, 40), 0.2, seed, "target", "d")
        return (
            [row["img"]["bytes"] for row in train.data],
            [row["img"]["bytes"] for row in val.data],
            val,
        )

    train, val_bytes, val = carve(seed=3)
    assert val.size == len(val_bytes) == 8 and len(train) == 32
    assert not set(train) & set(val_bytes) and len(set(train) | set(val_bytes)) == 40
    assert Counter(val.data["target"]) == {0: 2, 1: 2, 2: 2, 3: 2}  # stratified
    assert carve(seed=3)[1] == val_bytes and carve(seed=4)[1] != val_bytes


def test_held_out_validation_needs_enough_rows():
    with pytest.raises(ValueError, match="has 1 examples: too few to hold out val_fraction=0.1"):
        carve_validation(Split("train", coloured(range(1)), 1), 0.1, 0, "target", "d")


def test_image_files_from_folders_and_lists(imagefolder):
    dogs = image_files(str(imagefolder / "train" / "dog"))
    assert [f.rsplit("/", 1)[1] for f in dogs] == [f"{i}.png" for i in range(7)]
    assert len(image_files([str(imagefolder / "train")])) == 14
    with pytest.raises(ValueError, match="predict_paths entry '.*nope' does not exist"):
        image_files(str(imagefolder / "nope"))
    (imagefolder / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        image_files(str(imagefolder / "empty"))


def test_folds_are_disjoint_cover_the_split_and_keep_class_shares():
    from datasets import ClassLabel, Dataset, Features, Value

    from nat_lightning.data.sources import Split, carve_fold

    labels = [0] * 10 + [1] * 7 + [2] * 3  # 20 rows, unbalanced
    data = Dataset.from_dict(
        {"i": list(range(20)), "label": labels},
        features=Features({"i": Value("int64"), "label": ClassLabel(names=["a", "b", "c"])}),
    )
    train = Split("train", data, 20)
    parts = [carve_fold(train, 4, k, seed=3, label_column="label", dataset="toy") for k in range(4)]
    vals = [sorted(val.data["i"]) for _, val in parts]
    assert sorted(i for v in vals for i in v) == list(range(20))  # disjoint and covering
    for (fit, val), v in zip(parts, vals):
        assert sorted(fit.data["i"]) == sorted(set(range(20)) - set(v)) and val.size == len(v)
        counts = [sum(1 for i in v if labels[i] == c) for c in range(3)]
        assert all(abs(n - total / 4) < 1 for n, total in zip(counts, (10, 7, 3)))  # stratified
    again = carve_fold(train, 4, 2, seed=3, label_column="label", dataset="toy")
    assert sorted(again[1].data["i"]) == vals[2]  # deterministic for a seed
    other = carve_fold(train, 4, 2, seed=4, label_column="label", dataset="toy")
    assert sorted(other[1].data["i"]) != vals[2]
    with pytest.raises(ValueError, match="folds=30: .* has only 20 examples"):
        carve_fold(train, 30, 0, seed=0, label_column="label", dataset="toy")
