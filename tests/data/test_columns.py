"""Image and label columns from the features or by name; label names; the errors for bad columns."""

import pytest
from datasets import ClassLabel, Features, Image, Value

from nat_lightning.data.columns import resolve_columns


def no_values(column):
    raise AssertionError(f"a ClassLabel needs no scan of {column!r}")


def test_found_from_the_features():
    features = Features(
        {"caption": Value("string"), "photo": Image(), "kind": ClassLabel(names=["x", "y"])}
    )
    columns = resolve_columns(features, "d", None, None, no_values)
    assert (columns.image, columns.label, columns.names, columns.label_ids) == (
        "photo",
        "kind",
        ("x", "y"),
        None,
    )


def test_given_by_name_overrides_the_features():
    features = Features(
        {
            "a": Image(),
            "b": Value("binary"),
            "coarse": ClassLabel(names=["p"]),
            "fine": ClassLabel(names=["q", "r"]),
        }
    )
    columns = resolve_columns(features, "d", "b", "fine", no_values)
    assert (columns.image, columns.label, columns.names) == ("b", "fine", ("q", "r"))


def test_string_and_integer_labels_are_named_by_their_sorted_values():
    strings = Features({"image": Image(), "label": Value("string")})
    columns = resolve_columns(
        strings, "d", None, None, lambda c: ["zebra", "ant", None, "zebra", "bee"]
    )
    assert columns.names == ("ant", "bee", "zebra") and columns.label_ids == {
        "ant": 0,
        "bee": 1,
        "zebra": 2,
    }
    integers = Features({"image": Image(), "class_id": Value("int64")})
    columns = resolve_columns(integers, "d", None, "class_id", lambda c: [7, 3, 3, 12])
    assert columns.names == ("3", "7", "12") and columns.label_ids == {3: 0, 7: 1, 12: 2}


def test_unlabelled_data_is_allowed_when_labels_are_optional():
    columns = resolve_columns(
        Features({"image": Image()}), "d", None, None, no_values, labels_required=False
    )
    assert columns.label is None and columns.names == ()


def test_errors_name_the_column_and_list_the_columns():
    features = Features(
        {"img": Image(), "target": ClassLabel(names=["a"]), "score": Value("float32")}
    )
    with pytest.raises(
        ValueError,
        match=r"dataset 'd' has no image column \(no datasets.Image feature\); "
        r"columns: \{'target': 'ClassLabel', 'score': 'Value\(float32\)'\}",
    ):
        resolve_columns(
            Features({k: v for k, v in features.items() if k != "img"}), "d", None, None, no_values
        )
    two = Features({"left": Image(), "right": Image(), "target": ClassLabel(names=["a"])})
    with pytest.raises(
        ValueError, match=r"has several image columns \['left', 'right'\].*pass image_column="
    ):
        resolve_columns(two, "d", None, None, no_values)
    with pytest.raises(
        ValueError, match=r"image_column='photo' is not in dataset 'd'; columns: \{'img'"
    ):
        resolve_columns(features, "d", "photo", None, no_values)
    with pytest.raises(
        ValueError, match=r"image_column='score' of dataset 'd' is Value\(float32\); expected"
    ):
        resolve_columns(features, "d", "score", None, no_values)
    with pytest.raises(
        ValueError,
        match=r"label_column='score' of dataset 'd' is not categorical: it is "
        r"Value\(float32\); expected a ClassLabel, string or integer column",
    ):
        resolve_columns(features, "d", None, "score", no_values)
    with pytest.raises(ValueError, match=r"label_column='kind' is not in dataset 'd'; columns: "):
        resolve_columns(features, "d", None, "kind", no_values)
    with pytest.raises(
        ValueError, match=r"has no label column \(no ClassLabel.*columns: \{'img': 'Image'\}"
    ):
        resolve_columns(Features({"img": Image()}), "d", None, None, no_values)
