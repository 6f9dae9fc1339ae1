"""Where the images come from: Hub ids, local folders and files, in-memory datasets; their splits.

Every source goes through ``datasets``: a local folder through ``load_dataset(folder)`` (imagefolder
layout, or parquet/arrow files named by split), files through the ``parquet``/``arrow`` builders,
a Hub id through ``load_dataset(id)``. Errors name the dataset and the options that exist.
"""

from __future__ import annotations

import glob
import math
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    IterableDataset,
    IterableDatasetDict,
    LargeList,
    List,
)

FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# suffixes that make a string a file path: data and archive files, not just any dot (Hub names
# such as "bigcode/the-stack-v1.2" have one)
FILE_SUFFIXES = {*FILE_BUILDERS, *IMAGE_SUFFIXES, ".csv", ".json", ".jsonl", ".txt", ".zip", ".tar"}
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # name or org/name
MAX_LISTED = 10  # entries an error lists

Source = str | list[str] | Dataset | DatasetDict
Splits = DatasetDict | IterableDatasetDict


def describe(dataset: Source) -> str:
    """How error messages name a dataset."""
    if isinstance(dataset, (str, list)):
        return repr(dataset)
    if isinstance(dataset, Dataset):
        return f"<in-memory Dataset, {len(dataset)} rows>"
    return f"<in-memory {type(dataset).__name__}, splits {sorted(dataset)}>"


def is_hub_id(dataset: Source) -> bool:
    """A string that names no local file, folder or glob and reads as ``name`` or ``org/name``:
    a Hugging Face Hub dataset id. Anything else is a local path, which fails at once when it
    does not exist, instead of after a Hub lookup."""
    if not isinstance(dataset, str):
        return False
    return not Path(dataset).expanduser().exists() and not looks_local(dataset)


def looks_local(dataset: str) -> bool:
    """A path, not a Hub id: it starts with ``.``, ``/`` or ``~``, holds more than one ``/``,
    ends in a file suffix, is a glob, is no ``name`` or ``org/name``, or its first component
    exists here (``data/my_imgs`` next to a ``data`` folder)."""
    return (
        dataset.startswith((".", "/", "~"))
        or dataset.count("/") > 1
        or Path(dataset).suffix.lower() in FILE_SUFFIXES
        or glob.has_magic(dataset)
        or not HUB_NAME.fullmatch(dataset)
        or Path(dataset.split("/", 1)[0]).exists()
    )


def load_splits(
    dataset: Source,
    config_name: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
) -> Splits:
    """All splits of ``dataset``. Only Hub ids stream (an IterableDatasetDict); local and in-memory
    data are memory-mapped Arrow, which the streaming DataModule turns into shards itself."""
    if isinstance(dataset, Dataset):
        return DatasetDict({"train": dataset})
    if isinstance(dataset, DatasetDict):
        return dataset
    if is_hub_id(dataset):
        return load_hub(dataset, config_name, streaming, cache_dir)
    files = local_files(dataset)
    if len(files) == 1 and Path(files[0]).is_dir():
        folder = files[0]
        if (Path(folder) / "dataset_dict.json").exists() or (Path(folder) / "state.json").exists():
            loaded = datasets.load_from_disk(folder)  # written by save_to_disk
            return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
        return datasets.load_dataset(folder, config_name, cache_dir=cache_dir)
    suffixes = sorted({Path(f).suffix for f in files})
    if len(suffixes) != 1 or suffixes[0] not in FILE_BUILDERS:
        raise ValueError(
            f"dataset={dataset!r} holds files with suffixes {suffixes}; expected one folder, "
            f"or files that all end in one of {sorted(FILE_BUILDERS)}"
        )
    return datasets.load_dataset(
        FILE_BUILDERS[suffixes[0]], data_files={"train": files}, cache_dir=cache_dir
    )


def local_files(dataset: str | list[str]) -> list[str]:
    """The files (or the one folder) that a path, a glob or a list of them names."""
    entries = [dataset] if isinstance(dataset, str) else list(dataset)
    files = []
    for entry in entries:
        expanded = str(Path(entry).expanduser())
        if not glob.has_magic(expanded):
            if not Path(expanded).exists():
                raise ValueError(
                    f"dataset={dataset!r}: {entry!r} does not exist ({missing_path(expanded)}); "
                    "expected an existing folder or parquet/arrow file(s), or a Hub id written "
                    "as 'name' or 'org/name' (a path-like string is not looked up on the Hub)"
                )
            files.append(expanded)
            continue
        matches = sorted(glob.glob(expanded))
        if not matches:
            raise ValueError(
                f"dataset={dataset!r}: {entry!r} matches no file or folder; expected a glob "
                "that matches parquet/arrow files"
            )
        files += matches
    if len(files) > 1 and any(Path(f).is_dir() for f in files):
        raise ValueError(
            f"dataset={dataset!r} mixes folders with other paths; "
            "expected one folder or a list of files"
        )
    return files


def missing_path(path: str) -> str:
    """Where a missing path stops existing, for errors: what its folder holds (a typo shows), or
    the first of its folders that does not exist."""
    path = Path(path).absolute()
    first_missing = path
    while not first_missing.parent.exists():
        first_missing = first_missing.parent
    if first_missing != path:
        return f"nor does {str(first_missing)!r}"
    held = sorted(p.name for p in path.parent.iterdir())
    more = f" and {len(held) - MAX_LISTED} more" if len(held) > MAX_LISTED else ""
    return f"{str(path.parent)!r} holds {held[:MAX_LISTED]}{more}"


def load_hub(name: str, config_name: str | None, streaming: bool, cache_dir: str | None) -> Splits:
    try:
        return datasets.load_dataset(name, config_name, streaming=streaming, cache_dir=cache_dir)
    except Exception as err:  # offline, unknown id, gated, missing config: all end up here
        raise hub_error(name, config_name, err) from err


def hub_features(
    name: str, config_name: str | None, cache_dir: str | None
) -> datasets.Features | None:
    """A Hub dataset's declared features, read from its metadata without downloading its data."""
    try:
        return datasets.load_dataset_builder(name, config_name, cache_dir=cache_dir).info.features
    except Exception as err:
        raise hub_error(name, config_name, err) from err


def hub_error(name: str, config_name: str | None, err: Exception) -> ValueError:
    return ValueError(
        f"could not load dataset={name!r} (config_name={config_name!r}) from the Hugging Face Hub: "
        f"{type(err).__name__}: {err}. It is not a local path either. Check the id and config, "
        "the network and `huggingface-cli login` for gated datasets; with HF_HUB_OFFLINE=1 only "
        "datasets already in the local cache load."
    )


@dataclass(frozen=True)
class Split:
    """One split as the DataModule uses it: its rows and how many there are (None: a stream
    whose metadata does not say)."""

    name: str
    data: Dataset | IterableDataset
    size: int | None


def pick_split(splits: Splits, name: str, dataset: Source, field: str) -> Split:
    """The split called ``name``; an error listing the splits when there is none, or it is empty."""
    if name not in splits:
        raise ValueError(
            f"{field}={name!r} does not exist in dataset {describe(dataset)}; "
            f"available splits: {sorted(splits)}"
        )
    split = Split(name, splits[name], num_examples(splits[name]))
    if split.size == 0:
        raise ValueError(
            f"{field}={name!r} of dataset {describe(dataset)} is empty (0 examples); "
            "expected at least one image"
        )
    return split


def num_examples(data: Dataset | IterableDataset) -> int | None:
    """Rows of a split: exact for Arrow data, from the metadata for streams (None if undeclared)."""
    if isinstance(data, Dataset):
        return len(data)
    info = (data.info.splits or {}).get(str(data.split)) if data.split is not None else None
    return info.num_examples if info is not None and info.num_examples else None


def carve_validation(
    train: Split, fraction: float, seed: int, label_column: str | None, dataset: Source
) -> tuple[Split, Split]:
    """(train, val) with ``fraction`` of train held out: a seeded random split, stratified by a
    ClassLabel column when every class can be. Arrow data only: a stream cannot be split at random
    without reading all of it, and HF's ``take``/``skip`` cut a stream's head per DataLoader
    worker, so the held-out rows would depend on num_workers."""
    if not isinstance(train.data, Dataset):
        raise ValueError(  # noqa: TRY004 - a setting to change, not a wrong type
            f"dataset {describe(dataset)} is streamed and has no validation split to use, and "
            "none can be held out of a stream; set val_split to one of its splits, "
            "val_split=None to skip validation, or streaming=False"
        )
    n_val = math.ceil(fraction * train.size)
    if n_val >= train.size:
        raise ValueError(
            f"train_split={train.name!r} of dataset {describe(dataset)} has {train.size} examples: "
            f"too few to hold out val_fraction={fraction} and still train"
        )
    stratify = (
        label_column
        if label_column and isinstance(train.data.features[label_column], ClassLabel)
        else None
    )
    try:
        parts = train.data.train_test_split(test_size=n_val, seed=seed, stratify_by_column=stratify)
    except ValueError:  # a class too rare to appear on both sides: fall back to a plain split
        parts = train.data.train_test_split(test_size=n_val, seed=seed)
    return (
        Split(f"{train.name} minus val_fraction={fraction}", parts["train"], train.size - n_val),
        Split(f"val_fraction={fraction} of {train.name}", parts["test"], n_val),
    )


def carve_fold(
    train: Split, folds: int, fold: int, seed: int, label_column: str | None, dataset: Source
) -> tuple[Split, Split]:
    """(train, val) for fold ``fold`` of ``folds``-fold cross-validation: the rows are dealt into
    ``folds`` parts, class by class (a ClassLabel column; label set by label set for a list
    column, see ``strata``) in a seeded order, so every part holds
    each class in proportion (to one row); part ``fold`` validates, the others train. The same
    ``seed`` gives the same parts for every ``fold``: the K validation parts are disjoint and
    cover the split."""
    if not isinstance(train.data, Dataset):
        raise ValueError(  # noqa: TRY004 - a setting to change, not a wrong type
            f"folds={folds}: dataset {describe(dataset)} is streamed, and folds cannot be dealt "
            "from a stream without reading all of it; use streaming=False"
        )
    if train.size < folds:
        raise ValueError(
            f"folds={folds}: train_split={train.name!r} of dataset {describe(dataset)} has only "
            f"{train.size} examples; expected at least one per fold"
        )
    rng = np.random.default_rng(seed)
    labels = strata(train.data, label_column)
    if labels is not None:
        order = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
        )
    else:
        order = rng.permutation(train.size)
    # deal the ordered rows round-robin, starting each class where the last one ended
    part = np.empty(train.size, dtype=np.int64)
    part[order] = np.arange(train.size) % folds
    val_rows, train_rows = np.flatnonzero(part == fold), np.flatnonzero(part != fold)
    return (
        Split(
            f"{train.name} minus fold {fold} of {folds}",
            train.data.select(train_rows),
            len(train_rows),
        ),
        Split(
            f"fold {fold} of {folds} of {train.name}", train.data.select(val_rows), len(val_rows)
        ),
    )


def strata(data: Dataset, label_column: str | None) -> np.ndarray | None:
    """What folds are stratified by, one integer per row: the class of a ClassLabel column; the
    label set of a list column (multi-label: the set of ids or names, a multi-hot row as stored);
    None for anything else."""
    feature = data.features.get(label_column) if label_column else None
    if isinstance(feature, ClassLabel):
        return np.asarray(data[label_column])
    if not isinstance(feature, (List, LargeList)):
        return None
    inner = feature.feature
    as_set = isinstance(inner, ClassLabel) or getattr(inner, "dtype", "").endswith("string")
    rows = data.select_columns([label_column])[label_column]
    keys = [repr(sorted(set(row)) if as_set else list(row)) for row in rows]
    return np.unique(keys, return_inverse=True)[1]


def image_files(paths: str | list[str]) -> list[str]:
    """Image files under a folder (recursively, sorted) or from a list of files."""
    entries = [paths] if isinstance(paths, str) else list(paths)
    files = []
    for entry in map(Path, entries):
        if entry.is_dir():
            files += sorted(str(f) for f in entry.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif entry.is_file():
            files.append(str(entry))
        else:
            raise ValueError(
                f"predict_paths entry {str(entry)!r} does not exist; expected a folder of images "
                "or image files"
            )
    if not files:
        raise ValueError(
            f"predict_paths={paths!r} holds no image files; "
            f"expected suffixes {list(IMAGE_SUFFIXES)}"
        )
    return files


def is_folder_pair(dataset: Source) -> bool:
    """A local folder holding ``images/`` and ``masks/`` (HFSegmentationDataModule's layout)."""
    if not isinstance(dataset, str):
        return False
    root = Path(dataset).expanduser()
    return (root / "images").is_dir() and (root / "masks").is_dir()


def load_folder_pairs(folder: str) -> DatasetDict:
    """``images/`` and ``masks/`` files matched by stem, as ``image`` and ``annotation`` Image
    columns of file paths: one split ``train`` when the images lie directly in ``images/``, else
    one split per subfolder (``images/train/a.jpg`` pairs with ``masks/train/a.png``)."""
    root = Path(folder).expanduser()
    subfolders = sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
    names = subfolders or [None]
    splits = {}
    for name in names:
        images, masks = (root / kind / (name or "") for kind in ("images", "masks"))
        splits[name or "train"] = paired_files(images, masks, folder)
    return DatasetDict(splits)


def paired_files(images: Path, masks: Path, folder: str) -> Dataset:
    """The images under ``images`` with the masks of the same relative stem under ``masks``."""
    by_stem = {kind: stems(where) for kind, where in (("image", images), ("mask", masks))}
    unmatched = {
        kind: sorted(set(found) - set(by_stem["mask" if kind == "image" else "image"]))
        for kind, found in by_stem.items()
    }
    if not by_stem["image"] or any(unmatched.values()):
        raise ValueError(
            f"dataset={folder!r}: {str(images)!r} holds {len(by_stem['image'])} image(s) and "
            f"{str(masks)!r} {len(by_stem['mask'])} mask(s); images without a mask: "
            f"{unmatched['image'][:MAX_LISTED]}, masks without an image: "
            f"{unmatched['mask'][:MAX_LISTED]}; expected one mask per image with the same "
            f"name up to the suffix (suffixes {list(IMAGE_SUFFIXES)})"
        )
    order = sorted(by_stem["image"])
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    columns = {"image": [by_stem["image"][s] for s in order],
               "annotation": [by_stem["mask"][s] for s in order]}  # fmt: skip
    return Dataset.from_dict(columns, features=features)


def stems(folder: Path) -> dict[str, str]:
    """Image files under ``folder`` (recursively) by their path relative to it, minus suffix."""
    if not folder.is_dir():
        return {}
    found = {}
    for file in folder.rglob("*"):
        if file.suffix.lower() in IMAGE_SUFFIXES:
            stem = str(file.relative_to(folder).with_suffix(""))
            if stem in found:
                raise ValueError(
                    f"{str(folder)!r} holds two files named {stem!r} up to the suffix: "
                    f"{found[stem]!r} and {str(file)!r}; expected one per name"
                )
            found[stem] = str(file)
    return found
