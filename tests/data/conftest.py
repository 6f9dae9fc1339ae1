import io

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage


def png(color, size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def colour_of(i: int) -> tuple[int, int, int]:
    """A unique, recoverable colour per example id (ids < 4096)."""
    return (i % 16 * 16, i // 16 % 16 * 16, i // 256 * 16)


def id_of(pixels: np.ndarray) -> int:
    r, g, b = (int(round(float(v) / 16)) for v in pixels)
    return r + 16 * g + 256 * b


@pytest.fixture
def coloured_dataset():
    """40 solid-colour images, 4 classes; example i has colour_of(i) and label i % 4."""
    n = 40
    features = Features({"img": Image(), "target": ClassLabel(names=["a", "b", "c", "d"])})
    return Dataset.from_dict(
        {"img": [{"bytes": png(colour_of(i)), "path": None} for i in range(n)], "target": [i % 4 for i in range(n)]},
        features=features,
    )


@pytest.fixture
def imagefolder(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "train" / label).mkdir(parents=True)
        for i in range(6):
            PILImage.new("RGB", (20, 16), (i * 20, 0, 0)).save(tmp_path / "train" / label / f"{i}.png")
    return tmp_path
