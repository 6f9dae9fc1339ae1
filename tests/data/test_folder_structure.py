"""Image folders as datasets' imagefolder reads them: the error for one it read without class
labels says why and lists the folders holding images with their depth and count; empty folders
beside the class folders, which imagefolder drops, are named.

Each layout is first loaded with ``datasets.load_dataset`` itself, the oracle of what imagefolder
makes of it; the folders, depths and counts expected are derived from the files the test writes.
"""

from collections import Counter
from pathlib import PurePosixPath

import datasets
import pytest

from nat_lightning.data import HFImageDataModule
from nat_lightning.data.folder_structure import empty_class_folders, folder_images

from .conftest import write_images


def build(root, files: list[str]) -> str:
    write_images(root, {name: i for i, name in enumerate(files)})
    return str(root)


def folders_of(files: list[str]) -> Counter:
    """The test's own count of images by folder ('.' for the root) and that folder's depth."""
    parents = [str(PurePosixPath(f).parent) for f in files]
    return Counter((p, 0 if p == "." else p.count("/") + 1) for p in parents)


UNLABELLED = {  # layout -> (its files, why imagefolder gave no labels)
    "mixed nesting": (
        ["train/cats/0.png", "train/cats/1.png", "train/nested/dogs/0.png", "train/birds/0.png"]
        + ["train/nested/fish/0.png"],
        "its images lie at 2 different depths below the root (2, 3)",
    ),
    "a single class folder": (
        ["cats/0.png", "cats/1.png"],
        "every image lies in a folder named 'cats': one class",
    ),
    "images loose beside class folders": (
        ["0.png", "cats/0.png", "dogs/0.png", "dogs/1.png"],
        "its images lie at 2 different depths below the root (0, 1)",
    ),
    "one split nested a level deeper": (
        ["train/animals/cats/0.png", "train/animals/dogs/0.png", "validation/cats/0.png"]
        + ["validation/dogs/0.png"],
        "its images lie at 2 different depths below the root (2, 3)",
    ),
    "images loose in the root": (
        ["0.png", "1.png"],
        "its images lie directly in the root, in no class folder",
    ),
}


@pytest.mark.parametrize("layout", list(UNLABELLED))
def test_an_unlabelled_folder_is_described_as_imagefolder_read_it(layout, tmp_path):
    files, why = UNLABELLED[layout]
    root = build(tmp_path / "data", files)
    loaded = datasets.load_dataset(root)
    assert all("label" not in split.features for split in loaded.values())  # the premise
    with pytest.raises(ValueError) as error:
        _ = HFImageDataModule(root).num_classes
    message = str(error.value)
    assert message.startswith(f"dataset={root!r} is an image folder without class labels: {why}")
    listed = message.split("Folders holding images (relative to the root, with their depth")[1]
    for (folder, depth), count in folders_of(files).items():
        assert f"{folder!r} (depth {depth}): {count} image(s)" in listed, (folder, message)
    assert len(listed.split(" image(s)")) - 1 == len(folders_of(files))  # no other folder
    assert "Expected one subfolder per class" in message and "predict_paths=" in message


def test_images_outside_the_split_folders_are_listed_as_not_read(tmp_path):
    files = ["train/cats/0.png", "train/nested/dogs/0.png", "other/0.png", "other/1.png"]
    root = build(tmp_path / "data", files)
    assert datasets.load_dataset(root)["train"].num_rows == 2  # other/ is not read
    with pytest.raises(ValueError, match="without class labels") as error:
        _ = HFImageDataModule(root).num_classes
    read, unread = str(error.value).split("; not read, being outside the split folders: ")
    assert "'other'" not in read and unread.startswith("'other' (depth 1): 2 image(s).")


def test_split_folders_with_classes_one_level_deeper_are_labelled(tmp_path):
    """Every image at depth 3, in folders of two names: imagefolder labels it, no error."""
    files = ["train/animals/cats/0.png", "train/animals/dogs/0.png"]
    files += ["validation/animals/cats/0.png", "validation/animals/dogs/0.png"]
    root = build(tmp_path / "data", files)
    assert datasets.load_dataset(root)["train"].features["label"].names == ["cats", "dogs"]
    assert HFImageDataModule(root).id2label == {0: "cats", 1: "dogs"}
    assert folder_images(root).depths == [3]


def test_empty_folders_beside_the_class_folders_are_named(tmp_path):
    files = ["train/cats/0.png", "train/dogs/0.png", "validation/cats/0.png"]
    files += ["validation/dogs/0.png", "validation/zebra/0.png"]
    root = build(tmp_path / "data", files)
    for empty in ("train/zebra", "train/yak", "validation/yak", "train/.ipynb_checkpoints"):
        (tmp_path / "data" / empty).mkdir()
    (tmp_path / "data" / "train" / "notes").mkdir()
    (tmp_path / "data" / "train" / "notes" / "README.txt").write_text("no images here")
    classes = datasets.load_dataset(root)["train"].features["label"].names
    assert classes == ["cats", "dogs", "zebra"]  # the premise: empty yak/ and notes/ are dropped
    paths = [str(tmp_path / "data" / f) for f in files]
    empty = ["train/notes", "train/yak", "train/zebra", "validation/yak"]  # hidden ones skipped
    assert empty_class_folders(root, paths) == empty
    note = HFImageDataModule(root).empty_folders_note
    assert note == (
        f"image folder {root!r}: 3 empty folder(s) are not classes: 'train/notes', 'train/yak', "
        "'validation/yak'; 'train/zebra' is empty, so class 'zebra' has no images there "
        "(imagefolder makes classes only of the folders that hold images; the 3 classes: "
        "cats, dogs, zebra)"
    )


def test_no_note_without_empty_folders_or_without_a_folder(tmp_path, coloured_dict):
    root = build(tmp_path / "data", ["cats/0.png", "dogs/0.png"])
    assert HFImageDataModule(root).empty_folders_note is None
    assert HFImageDataModule(coloured_dict).empty_folders_note is None
