"""Tiny image datasets whose every example can be recognised from its pixels.

Example i is a solid colour, ``colour_of(i)``; ``id_of`` reads i back from any pixel of the
un-normalised (mean 0, std 1) tensor. Solid colours survive resizing and cropping unchanged.
"""

import io
from pathlib import Path

import datasets
import lightning as L
import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

# DataModule settings under which pixel_values * 255 are the stored RGB values
PLAIN = {
    "image_size": 8,
    "crop_pct": 1.0,
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "num_workers": 0,
    "batch_size": 8,
    "crop_scale": (1.0, 1.0),
    "hflip": 0.0,
    "rand_augment_ops": 0,
    "color_jitter": 0.0,
    "random_erasing": 0.0,
}


def quiet_trainer(**overrides) -> L.Trainer:
    """A one-epoch CPU Trainer that writes nothing and prints no progress."""
    settings = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**settings, **overrides})


@pytest.fixture(autouse=True)
def hermetic_datasets(monkeypatch, tmp_path):
    """No Hub requests (the machine is offline; datasets would still try, and wait), a fresh Arrow
    cache per test instead of ~/.cache/huggingface, and no 5 s pause at the end of every
    multi-file parquet stream (datasets waits for PyArrow's threads; tiny files need no wait)."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def colour_of(i: int) -> tuple[int, int, int]:
    """A unique colour per id (ids < 4096)."""
    return (i % 16 * 16, i // 16 % 16 * 16, i // 256 * 16)


def id_of(pixels) -> int:
    """The id of a (3, H, W) or (3,) tensor/array on the 0..1 scale."""
    rgb = np.asarray(pixels, dtype=np.float64).reshape(3, -1)[:, 0] * 255
    r, g, b = (round(v / 16) for v in rgb)
    return r + 16 * g + 256 * b


def ids_in(batch, real_only: bool = True) -> list[int]:
    return [
        id_of(p)
        for p, label in zip(batch["pixel_values"], batch["labels"])
        if label >= 0 or not real_only
    ]


def png(colour, size=(12, 10), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    PILImage.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_png() -> bytes:
    """The first half of a noisy 64x64 PNG: the header reads, the pixels do not."""
    buffer = io.BytesIO()
    PILImage.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


BROKEN = {"truncated": truncated_png, "zero-byte": lambda: b""}  # kind -> the bytes of a bad PNG


def write_images(root: Path, files: dict[str, int | str]) -> list[str]:
    """Write ``root/<relative path>`` for each entry: a colour_of(id) PNG for an int, a BROKEN
    kind's bytes for a str. The paths, in the order given."""
    paths = []
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png(colour_of(content)) if isinstance(content, int) else BROKEN[content]())
        paths.append(str(path))
    return paths


def coloured(ids, num_classes: int = 4, image="img", label="target") -> Dataset:
    """Example i: colour_of(i), label i % num_classes, in columns named ``image`` and ``label``."""
    ids = list(ids)
    names = [chr(ord("a") + k) for k in range(num_classes)]
    features = Features({image: Image(), label: ClassLabel(names=names)})
    return Dataset.from_dict(
        {
            image: [{"bytes": png(colour_of(i)), "path": None} for i in ids],
            label: [i % num_classes for i in ids],
        },
        features=features,
    )


@pytest.fixture
def coloured_dataset() -> Dataset:
    """40 examples, 4 classes a..d, columns img/target."""
    return coloured(range(40))


@pytest.fixture
def coloured_dict() -> DatasetDict:
    """train: ids 0..36, validation: ids 100..110."""
    return DatasetDict({"train": coloured(range(37)), "validation": coloured(range(100, 111))})


@pytest.fixture
def imagefolder(tmp_path) -> Path:
    """train/{cat,dog}/i.png (7 each, 32x32) and validation/{cat,dog}/i.png (2 each); colour_of ids:
    cat i -> i, dog i -> 50 + i, validation + 200."""
    for split, n, offset in (("train", 7, 0), ("validation", 2, 200)):
        for label, base in (("cat", 0), ("dog", 50)):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                PILImage.new("RGB", (32, 32), colour_of(offset + base + i)).save(
                    folder / f"{i}.png"
                )
    return tmp_path / "images"


# -- segmentation: masks of class ids and images whose colours name the classes ----------------

# class k of a pair is painted CLASS_COLOURS[k]: far apart, none black (padding) or near it
CLASS_COLOURS = np.array(
    [[200, 200, 200], [220, 40, 40], [40, 200, 60], [50, 70, 230], [230, 210, 40]], dtype=np.uint8
)


def mask_png(ids: np.ndarray, mode: str = "L", palette: list[int] | None = None) -> bytes:
    """A PNG of ``ids`` (H, W) as grey levels ("L") or palette indices ("P", with ``palette``,
    a flat list of RGB values)."""
    image = PILImage.fromarray(ids.astype(np.uint8), mode="L")
    if mode == "P":
        image = image.convert("P")  # "L" -> "P" keeps the values as indices
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def array_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def blocks(seed: int, shape=(32, 32), num_classes: int = 5, block: int = 8) -> np.ndarray:
    """An (H, W) uint8 mask of random classes in ``block``-pixel squares."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, num_classes, (shape[0] // block + 1, shape[1] // block + 1))
    return np.kron(cells, np.ones((block, block), dtype=np.int64))[: shape[0], : shape[1]].astype(
        np.uint8
    )


def pairs(masks, names=("bg", "a", "b", "c", "d"), image="image", mask="annotation") -> Dataset:
    """Images CLASS_COLOURS[mask] (PNG) and their masks ("L" PNG), with a ClassLabel ``classes``
    column naming the classes."""
    features = Features(
        {image: Image(), mask: Image(), "classes": datasets.List(ClassLabel(names=list(names)))}
    )
    return Dataset.from_dict(
        {
            image: [{"bytes": array_png(CLASS_COLOURS[m]), "path": None} for m in masks],
            mask: [{"bytes": mask_png(m), "path": None} for m in masks],
            "classes": [sorted(set(np.unique(m).tolist())) for m in masks],
        },
        features=features,
    )


def classes_of(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) 0..255 colours -> (H, W) the class of the nearest CLASS_COLOURS entry."""
    distance = ((pixels[..., None, :] - CLASS_COLOURS.astype(np.float64)) ** 2).sum(-1)
    return distance.argmin(-1)


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds one class: away from interpolation edges (a crop's
    border pixels are not: their neighbours across it are unknown)."""
    padded = np.pad(mask.astype(np.int64), 1, constant_values=-1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
    return (windows == mask[..., None, None]).all(axis=(-1, -2))
