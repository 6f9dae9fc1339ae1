"""Where the images come from: Hub ids, local folders and files, in-memory datasets; their
splits, their image and label columns, their label names. Errors name the options that exist.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Image, IterableDatasetDict, Value

_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def describe(dataset) -> str:
    return dataset if isinstance(dataset, str) else f"<in-memory {type(dataset).__name__}>"


def load_source(dataset, config_name: str | None = None, streaming: bool = False):
    """A DatasetDict (or IterableDatasetDict for Hub streaming) for any supported ``dataset``."""
    if isinstance(dataset, Dataset):
        return DatasetDict({"train": dataset})
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        return dataset
    if not isinstance(dataset, str):
        raise ValueError(f"dataset must be a Hub id, a path or a datasets.Dataset, got {type(dataset).__name__}")
    path = Path(dataset).expanduser()
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})
    if path.is_dir():
        return datasets.load_dataset(str(path), config_name)
    files = sorted(glob.glob(str(path))) if any(c in dataset for c in "*?[") else [str(path)] if path.is_file() else []
    if files:
        builder = _FILE_BUILDERS.get(Path(files[0]).suffix)
        if builder is None:
            raise ValueError(f"dataset={dataset!r}: unsupported file type; expected one of {sorted(_FILE_BUILDERS)}")
        return datasets.load_dataset(builder, data_files={"train": files})
    if dataset.startswith((".", "/", "~")) or dataset.count("/") > 1:
        raise FileNotFoundError(f"dataset={dataset!r} does not exist")
    try:
        return datasets.load_dataset(dataset, config_name, streaming=streaming)
    except Exception as err:  # offline, unknown id, gated, missing config
        raise ValueError(
            f"could not load dataset={dataset!r} (config_name={config_name!r}) from the Hugging Face Hub: {err}. "
            "Check the id and config, your network and login; with HF_HUB_OFFLINE=1 only cached datasets load."
        ) from err


def pick_split(splits, name: str, dataset, field: str):
    if name not in splits:
        raise ValueError(f"{field}={name!r} does not exist in dataset {describe(dataset)}; "
                         f"available splits: {sorted(splits)}")
    return splits[name]


@dataclass
class Columns:
    image: str
    label: str
    names: list[str]  # class names by id
    string_labels: bool  # labels are strings to be mapped to ids via ``names``


def find_columns(features, dataset, image_column: str | None, label_column: str | None,
                 string_values=None) -> Columns:
    """Image and label columns from the features (Image, ClassLabel) or by name; label names."""
    if features is None:
        raise ValueError(f"dataset {describe(dataset)} does not declare its features; give image_column and "
                         "label_column and use a dataset with typed columns")
    columns = list(features)
    if image_column is None:
        found = [c for c, f in features.items() if isinstance(f, Image)]
        if not found:
            raise ValueError(f"dataset {describe(dataset)} has no image column (no datasets.Image feature); "
                             f"columns: {columns}; pass image_column=")
        image_column = found[0]
    elif image_column not in features:
        raise ValueError(f"image_column={image_column!r} is not in dataset {describe(dataset)}; columns: {columns}")
    if label_column is None:
        found = [c for c, f in features.items() if isinstance(f, ClassLabel)]
        found = found or [c for c in ("label", "labels", "fine_label") if c in features]
        if not found:
            raise ValueError(f"dataset {describe(dataset)} has no label column (no ClassLabel feature); "
                             f"columns: {columns}; pass label_column=")
        label_column = found[0]
    elif label_column not in features:
        raise ValueError(f"label_column={label_column!r} is not in dataset {describe(dataset)}; columns: {columns}")
    feature = features[label_column]
    if isinstance(feature, ClassLabel):
        return Columns(image_column, label_column, list(feature.names), False)
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        if string_values is None:
            raise ValueError(f"label_column={label_column!r} of dataset {describe(dataset)} holds strings; "
                             "with streaming=True it must be a ClassLabel (its names cannot be known up front)")
        return Columns(image_column, label_column, sorted(set(string_values())), True)
    if isinstance(feature, Value) and feature.dtype.startswith(("int", "uint")):
        values = string_values() if string_values is not None else None
        if values is None:
            raise ValueError(f"label_column={label_column!r} of dataset {describe(dataset)} holds plain integers; "
                             "with streaming=True it must be a ClassLabel")
        return Columns(image_column, label_column, [str(i) for i in range(max(values) + 1)], False)
    raise ValueError(f"label_column={label_column!r} of dataset {describe(dataset)} is not categorical "
                     f"(feature {feature}); expected a ClassLabel, string or integer column")
