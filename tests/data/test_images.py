"""Decoding: every PIL mode becomes 8-bit RGB with the expected pixel values; broken images are
None, and the collate function drops and counts them."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from nat_lightning.data.columns import Columns
from nat_lightning.data.images import (
    MAX_NAMED,
    Collate,
    ExampleDecoder,
    ImageExamples,
    SkipTally,
    Undecodable,
    decode_image,
    to_rgb,
)
from nat_lightning.data.transforms import eval_transform


def stored(image: Image.Image, fmt: str = "PNG") -> dict:
    """The image as a datasets Image(decode=False) value, checking the file reopens in its mode."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == image.mode
    return {"bytes": buffer.getvalue(), "path": None}


def over_white(value: int, alpha: int) -> int:
    """Alpha compositing over white, the oracle for transparent modes."""
    return round(value * alpha / 255 + 255 * (1 - alpha / 255))


def palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (4, 3), 0)
    image.putpalette([200, 100, 50] + [0, 0, 0] * 255)
    if transparent:
        image.info["transparency"] = 0
    return image


@pytest.mark.parametrize(
    "mode,value,fmt,expected",
    [
        ("RGB", (1, 2, 3), "PNG", (1, 2, 3)),
        ("L", 100, "PNG", (100,) * 3),
        ("LA", (100, 255), "PNG", (100,) * 3),
        ("LA", (100, 0), "PNG", (255,) * 3),  # fully transparent: the white background
        ("LA", (100, 128), "PNG", (over_white(100, 128),) * 3),
        ("RGBA", (10, 20, 30, 255), "PNG", (10, 20, 30)),
        ("RGBA", (10, 20, 30, 0), "PNG", (255, 255, 255)),
        ("RGBA", (10, 20, 30, 64), "PNG", tuple(over_white(v, 64) for v in (10, 20, 30))),
        ("1", 1, "PNG", (255,) * 3),
        ("1", 0, "PNG", (0,) * 3),
        ("CMYK", (0, 255, 255, 0), "TIFF", (255, 0, 0)),  # no cyan, full magenta and yellow: red
        ("CMYK", (0, 0, 0, 0), "TIFF", (255,) * 3),  # no ink: white
        ("CMYK", (0, 0, 0, 255), "TIFF", (0,) * 3),  # full black
        ("I;16", 65535, "PNG", (255,) * 3),
        ("I;16", 32896, "PNG", (128,) * 3),  # 32896 / 257 = 128: scaled...
        ("I;16", 1000, "PNG", (4,) * 3),  # ...not clipped (PIL's convert("L") would give 255)
        ("I;16B", 2570, "TIFF", (10,) * 3),
        ("I", 514, "TIFF", (2,) * 3),  # 32-bit integers are read as 16-bit data
        ("I", 70000, "TIFF", (255,) * 3),  # beyond 16 bits saturates
        ("F", 127.6, "TIFF", (128,) * 3),  # floats are on PIL's 0..255 scale
        ("F", 300.0, "TIFF", (255,) * 3),
        ("F", -5.0, "TIFF", (0,) * 3),
    ],
)
def test_every_mode_becomes_rgb(mode, value, fmt, expected):
    pixels = decode_image(stored(Image.new(mode, (4, 3), value), fmt))
    assert pixels.shape == (3, 4, 3) and pixels.dtype == np.uint8
    assert np.all(pixels == np.array(expected, dtype=np.uint8))


def test_palette_modes():
    assert tuple(decode_image(stored(palette_image(False)))[0, 0]) == (200, 100, 50)
    assert tuple(decode_image(stored(palette_image(True)))[0, 0]) == (
        255,
        255,
        255,
    )  # transparent index
    pa = palette_image(False).convert("PA")  # PIL cannot write PA: convert it in memory
    pa.putalpha(0)
    assert tuple(to_rgb(pa)[0, 0]) == (255, 255, 255)


def test_file_paths_decode_like_bytes(tmp_path):
    Image.new("L", (5, 5), 77).save(tmp_path / "a.png")
    assert np.all(decode_image({"bytes": None, "path": str(tmp_path / "a.png")}) == 77)
    assert np.all(decode_image(str(tmp_path / "a.png")) == 77)


@pytest.mark.parametrize(
    "value",
    [
        {"bytes": b"\x89PNG\r\n\x1a\n but no image", "path": None},
        {"bytes": b"", "path": None},
        {"bytes": None, "path": "/no/such/file.png"},
        {"bytes": None, "path": None},
        None,
    ],
)
def test_broken_values_decode_to_none(value):
    assert decode_image(value) is None


def test_a_truncated_image_is_broken():
    data = stored(Image.effect_noise((64, 64), 50).convert("RGB"))["bytes"]
    assert decode_image({"bytes": data[: len(data) // 2], "path": None}) is None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP"])
@pytest.mark.parametrize("load_truncated", [False, True])
def test_a_file_cut_short_is_undecodable_even_where_pil_is_told_to_load_it(
    fmt, load_truncated, monkeypatch
):
    """PIL raises at load() on a file cut short, unless ImageFile.LOAD_TRUNCATED_IMAGES is set,
    when it pads the missing rows: decode_image refuses either way and leaves the flag as set."""
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format=fmt)
    cut = buffer.getvalue()[: len(buffer.getvalue()) * 7 // 10]  # past the header
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    if load_truncated and fmt in ("JPEG", "PNG", "BMP"):  # PIL itself decodes these padded
        with Image.open(io.BytesIO(cut)) as image:
            image.load()
    assert decode_image({"bytes": cut, "path": None}) is None
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated


def test_decoder_labels_and_collate_counts_the_broken():
    columns = Columns("image", "label", ("x", "y"), None)
    decoder = ExampleDecoder(columns, eval_transform(4, (0, 0, 0), (1, 1, 1), 1.0), random=False)
    good = stored(Image.new("RGB", (6, 6), (51, 102, 153)))
    rows = [
        {"image": good, "label": 1},
        {"image": {"bytes": b"junk", "path": None}, "label": 0},
        {"image": good, "label": -1},
    ]  # -1: a ClassLabel's "no label"
    examples = ImageExamples(rows, decoder, ids=True)
    assert examples[1] == Undecodable(id=1, name="row 1")  # the id survives, the row names it
    batch = Collate(4)([examples[i] for i in range(3)])
    assert batch["num_skipped"] == 1 and batch["num_examples"] == 3
    assert batch["skipped_names"] == ["row 1"]
    assert batch["ids"] == [0, 1, 2] and batch["decoded"] == [True, False, True]  # every input
    assert batch["labels"].tolist() == [1, -100] and batch["labels"].dtype == torch.int64
    assert (
        batch["pixel_values"].shape == (2, 3, 4, 4) and batch["pixel_values"].dtype == torch.float32
    )
    torch.testing.assert_close(batch["pixel_values"][0, :, 0, 0], torch.tensor([0.2, 0.4, 0.6]))

    strings = ExampleDecoder(
        Columns("image", "kind", ("ant", "bee"), {"ant": 0, "bee": 1}), decoder.transform, False
    )
    assert strings({"image": good, "kind": "bee"})["labels"] == 1
    assert strings({"image": good})["labels"] == -100  # a split without the label column

    empty = Collate(4)([Undecodable(), Undecodable(name="/data/x.png")])
    assert empty["num_skipped"] == 2 and empty["skipped_names"] == ["/data/x.png"]
    assert empty["pixel_values"].shape == (0, 3, 4, 4) and len(empty["labels"]) == 0
    assert "ids" not in empty and "decoded" not in empty  # no ids: not a predict batch


def test_undecodable_examples_are_named_by_path_else_row(tmp_path):
    columns = Columns("image", None, (), None)
    decoder = ExampleDecoder(columns, eval_transform(4, (0, 0, 0), (1, 1, 1), 1.0), random=False)
    (tmp_path / "bad.png").write_bytes(b"")
    rows = [
        {"image": {"bytes": None, "path": str(tmp_path / "bad.png")}},
        {"image": {"bytes": b"junk", "path": "photos/7.jpg"}},  # bytes win, the path names it
        {"image": str(tmp_path / "missing.png")},
        {"image": {"bytes": b"junk", "path": None}},
    ]
    names = [ImageExamples(rows, decoder)[i].name for i in range(4)]
    assert names == [
        str(tmp_path / "bad.png"),
        "photos/7.jpg",
        str(tmp_path / "missing.png"),
        "row 3",
    ]
    assert decoder(rows[3]) == Undecodable(None, None)  # a streamed row: no index, no path


def test_a_tally_takes_the_counts_out_of_batches():
    tally = SkipTally()
    for names in (["a", "b"], [f"n{i}" for i in range(12)]):
        batch = {
            "labels": [],
            "num_examples": 20,
            "num_skipped": len(names),
            "skipped_names": names,
        }
        tally.take(batch)
        assert batch == {"labels": []}
    assert (tally.seen, tally.skipped) == (40, 14)
    assert tally.names == ["a", "b"] + [f"n{i}" for i in range(MAX_NAMED - 2)]
