"""Masks read as class ids (nat_lightning.data.masks): palette and grayscale PNGs as stored, RGB
masks refused or mapped by colour, ADE20K's reduce_labels, class names, size mismatches."""

import io
import json

import numpy as np
import pytest
from datasets import ClassLabel, Features, Image, List
from PIL import Image as PILImage

from nat_lightning.data.images import decode_image
from nat_lightning.data.masks import (
    MaskModeError,
    class_names,
    decode_mask,
    fit_mask,
    parse_color_map,
    reduce_labels,
)

from .conftest import array_png, blocks, mask_png

IDS = np.array([[0, 1, 2, 3], [4, 5, 6, 255]], dtype=np.uint8)


def test_a_palette_mask_reads_as_its_indices_not_its_colours():
    palette = [v for k in range(256) for v in ((37 * k) % 256, (91 * k + 5) % 256, 255 - k)]
    data = mask_png(IDS, mode="P", palette=palette)
    np.testing.assert_array_equal(decode_mask(data, None, "m"), IDS)
    # the same file converted to RGB holds the palette's colours: what must not happen to ids
    colours = np.array(palette, dtype=np.uint8).reshape(256, 3)[IDS]
    np.testing.assert_array_equal(decode_image(data), colours)


def test_grayscale_and_16_bit_masks_keep_their_values():
    np.testing.assert_array_equal(decode_mask(mask_png(IDS), None, "m"), IDS)
    wide = np.array([[0, 300], [1000, 7]], dtype=np.uint16)
    buffer = io.BytesIO()
    PILImage.fromarray(wide).save(buffer, format="PNG")
    read = decode_mask(buffer.getvalue(), None, "m")
    np.testing.assert_array_equal(read, wide)
    assert read.dtype == np.uint16


def test_an_rgb_mask_is_refused_by_name_and_mode_unless_a_color_map_is_given():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, :] = (0, 128, 255)
    rgb[0, 2] = (9, 9, 9)  # in no map
    with pytest.raises(MaskModeError, match=r"mask 'seg' of row 4 is a RGB image.*color_map="):
        decode_mask(array_png(rgb), None, "'seg' of row 4")
    mapping = parse_color_map({"#ff0000": 1, "0,128,255": 3, "0, 0, 0": 0})
    expected = np.array([[1, 0, 255], [3, 3, 3]], dtype=np.uint8)
    np.testing.assert_array_equal(decode_mask(array_png(rgb), mapping, "m"), expected)


@pytest.mark.parametrize(
    ("color_map", "message"),
    [
        ({"red": 1}, "color_map key 'red': expected a colour"),
        ({"#ff0000": 256}, r"color_map\['#ff0000'\]=256: expected an id in 0..255"),
        ({"1,2": 1}, "color_map key '1,2'"),
    ],
)
def test_bad_color_maps(color_map, message):
    with pytest.raises(ValueError, match=message):
        parse_color_map(color_map)


def test_corrupt_masks_decode_to_none():
    whole = mask_png(IDS)
    assert decode_mask(whole[: len(whole) // 2], None, "m") is None
    assert decode_mask(b"", None, "m") is None
    assert decode_mask({"bytes": None, "path": None}, None, "m") is None  # nothing stored


def test_reduce_labels_follows_ade20k():
    mask = np.array([[0, 1, 2], [150, 254, 255]], dtype=np.uint8)
    expected = np.array([[255, 0, 1], [149, 253, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(reduce_labels(mask), expected)
    assert reduce_labels(mask).dtype == np.uint8


def test_class_names_from_a_labels_file_the_features_or_a_count(tmp_path):
    features = Features({"image": Image(), "classes": List(ClassLabel(names=["sky", "sea"]))})
    assert class_names(features, None, None, "d") == ("sky", "sea")
    by_id = tmp_path / "id2label.json"
    by_id.write_text(json.dumps({"0": "wall", "2": "floor"}))
    assert class_names(features, str(by_id), None, "d") == ("wall", "class_1", "floor")
    listed = tmp_path / "names.json"
    listed.write_text(json.dumps(["a", "b"]))
    assert class_names(features, str(listed), 2, "d") == ("a", "b")
    plain = Features({"image": Image(), "annotation": Image()})
    assert class_names(plain, None, 3, "d") == ("class_0", "class_1", "class_2")
    with pytest.raises(
        ValueError, match="does not name its classes.*labels_file=.*unnamed_classes="
    ):
        class_names(plain, None, None, "d")
    with pytest.raises(ValueError, match="unnamed_classes=3 but the ClassLabel.*names 2 classes"):
        class_names(features, None, 3, "d")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"wall": 0}))
    with pytest.raises(ValueError, match="expected a JSON list of names or an object"):
        class_names(plain, str(bad), None, "d")
    with pytest.raises(ValueError, match="cannot be read as JSON"):
        class_names(plain, str(tmp_path / "missing.json"), None, "d")
    # an image-level ClassLabel (scene_parse_150's scene_category) does not name mask classes
    scenes = Features({"image": Image(), "scene_category": ClassLabel(names=["a", "b", "c"])})
    assert class_names(scenes, None, 2, "d") == ("class_0", "class_1")


def test_a_mismatched_mask_is_resized_with_nearest_neighbours_or_refused():
    mask = blocks(0, shape=(8, 6), block=2)
    resized = fit_mask(mask, (16, 12), "resize", "m")
    np.testing.assert_array_equal(resized, np.kron(mask, np.ones((2, 2), dtype=np.uint8)))
    assert fit_mask(mask, (8, 6), "error", "m") is mask
    with pytest.raises(ValueError, match=r"row 3: the image is 16x12 \(HxW\) but its mask is 8x6"):
        fit_mask(mask, (16, 12), "error", "row 3")
