"""Every PIL mode becomes 8-bit RGB with the right pixel values."""

import io

import numpy as np
import pytest
from PIL import Image

from nat_lightning.data.images import decode


def encoded(image: Image.Image, fmt="PNG") -> dict:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return {"bytes": buf.getvalue(), "path": None}


@pytest.mark.parametrize(
    "image,expected",
    [
        (Image.new("L", (4, 3), 100), (100, 100, 100)),
        (Image.new("LA", (4, 3), (100, 0)), (255, 255, 255)),  # fully transparent -> white background
        (Image.new("LA", (4, 3), (100, 255)), (100, 100, 100)),
        (Image.new("RGBA", (4, 3), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("RGBA", (4, 3), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("1", (4, 3), 1), (255, 255, 255)),
        (Image.new("I;16", (4, 3), 65535), (255, 255, 255)),
        (Image.new("I;16", (4, 3), 32896), (128, 128, 128)),  # scaled, not clipped to 255
        (Image.new("I", (4, 3), 32896), (128, 128, 128)),
        (Image.new("F", (4, 3), 0.5), (128, 128, 128)),
        (Image.new("RGB", (4, 3), (1, 2, 3)), (1, 2, 3)),
    ],
    ids=lambda v: getattr(v, "mode", ""),
)
def test_modes_convert_to_rgb(image, expected):
    fmt = "TIFF" if image.mode in ("I", "F") else "PNG"
    array = decode(encoded(image, fmt))
    assert array.shape == (3, 4, 3) and array.dtype == np.uint8
    assert tuple(array[0, 0]) == expected


def test_palette_with_transparency_and_cmyk():
    p = Image.new("P", (4, 3), 0)
    p.putpalette([200, 100, 50] + [0] * 765)
    assert tuple(decode(encoded(p))[0, 0]) == (200, 100, 50)
    p.info["transparency"] = 0
    assert tuple(decode(encoded(p))[0, 0]) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 3), (0, 0, 0, 0))  # no ink: white
    assert tuple(decode(encoded(cmyk, "JPEG"))[0, 0]) == (255, 255, 255)


@pytest.mark.parametrize("value", [{"bytes": b"not an image", "path": None}, {"bytes": None, "path": "/nope.png"}, None])
def test_broken_images_decode_to_none(value):
    assert decode(value) is None


def test_truncated_png_is_broken():
    data = encoded(Image.new("RGB", (64, 64), (1, 2, 3)))["bytes"]
    assert decode({"bytes": data[: len(data) // 2], "path": None}) is None
