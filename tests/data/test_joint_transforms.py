"""Joint pipelines (nat_lightning.data.joint_transforms) keep image and mask aligned: the image's
colours name the classes, so after any transform the class read back from each pixel's colour
must equal the mask, away from the edges that interpolation blends."""

import albumentations as A
import numpy as np
import pytest
import torch

from nat_lightning.data.joint_transforms import (
    BalancedCrop,
    eval_finish,
    eval_resize,
    train_pipeline,
)
from nat_lightning.data.transforms import reseed

from .conftest import CLASS_COLOURS, blocks, classes_of, interior

PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # pixel_values * 255 are colours


def colours(pixel_values: torch.Tensor) -> np.ndarray:
    return pixel_values.permute(1, 2, 0).numpy() * 255.0


def check_aligned(pixel_values: torch.Tensor, labels: torch.Tensor) -> int:
    """Asserts that padding is black with label 255 and that every other interior pixel's colour
    names its label; returns how many pixels were compared."""
    image, mask = colours(pixel_values), labels.numpy().astype(np.int64)
    padding = mask == 255
    assert np.abs(image[padding]).max(initial=0) < 1e-6
    inside = interior(mask) & ~padding
    np.testing.assert_array_equal(classes_of(image)[inside], mask[inside])
    return int(inside.sum())


@pytest.mark.parametrize("seed", range(6))
def test_training_keeps_image_and_mask_aligned(seed):
    torch.manual_seed(seed)
    mask = blocks(seed, shape=(40, 56))
    pipeline = train_pipeline(32, 40, scale_range=(0.5, 2.0), hflip=0.5, photometric=False, **PLAIN)
    reseed(pipeline)
    out = pipeline(image=CLASS_COLOURS[mask], mask=mask)
    assert out["image"].shape == (3, 32, 32) and out["mask"].shape == (32, 32)
    assert check_aligned(out["image"], out["mask"]) > 0


def test_scaling_below_the_crop_pads_with_black_and_ignored_labels():
    mask = blocks(1, shape=(20, 30))
    pipeline = train_pipeline(48, 20, scale_range=(1.0, 1.0), hflip=0.0, photometric=False, **PLAIN)
    out = pipeline(image=CLASS_COLOURS[mask], mask=mask)
    labels = out["mask"].numpy()
    # the short side stays 20 (ratio 1): 20 x 30 of content, the rest of the 48 x 48 crop padding
    assert (labels != 255).sum() == 20 * 30
    check_aligned(out["image"], out["mask"])


def test_the_photometric_distortion_changes_the_image_only():
    mask = blocks(2, shape=(32, 32))
    image = CLASS_COLOURS[mask]
    pipeline = train_pipeline(32, 32, scale_range=(1.0, 1.0), hflip=0.0, photometric=True, **PLAIN)
    changed = 0
    for seed in range(8):
        torch.manual_seed(seed)
        reseed(pipeline)
        out = pipeline(image=image, mask=mask)
        np.testing.assert_array_equal(out["mask"].numpy(), mask)
        changed += not np.allclose(colours(out["image"]), image, atol=0.5)
    assert changed >= 4  # each of its four steps runs with probability 0.5


@pytest.mark.parametrize(("shape", "eval_size"), [((40, 56), 32), ((30, 20), 45), ((64, 64), 64)])
def test_evaluation_resizes_the_short_side_and_pads_to_multiples_of_32(shape, eval_size):
    mask = blocks(3, shape=shape, block=10)
    resized = eval_resize(eval_size)(image=CLASS_COLOURS[mask], mask=mask)
    content = resized["image"].shape[:2]
    assert min(content) == eval_size
    assert abs(content[0] / content[1] - shape[0] / shape[1]) < 0.05  # the aspect kept
    out = eval_finish(**PLAIN)(image=resized["image"], mask=resized["mask"])
    height, width = out["image"].shape[1:]
    assert height % 32 == 0 and width % 32 == 0
    assert height - 32 < content[0] <= height and width - 32 < content[1] <= width
    labels = out["mask"].numpy()
    assert (labels[: content[0], : content[1]] != 255).all()  # content at the top left
    assert (labels != 255).sum() == content[0] * content[1]
    check_aligned(out["image"], out["mask"])


@pytest.mark.parametrize("seed", range(3))
def test_masks_are_resized_with_nearest_neighbours_only(seed):
    mask = (blocks(seed, shape=(37, 45), num_classes=2, block=3) * 4).astype(np.uint8)  # 0 and 4
    torch.manual_seed(seed)
    pipeline = train_pipeline(40, 37, scale_range=(0.6, 1.7), photometric=False, **PLAIN)
    reseed(pipeline)
    out = pipeline(image=CLASS_COLOURS[mask], mask=mask)
    assert set(out["mask"].unique().tolist()) <= {0, 4, 255}  # no blend such as 1, 2 or 3
    resized = eval_resize(50)(image=CLASS_COLOURS[mask], mask=mask)
    assert set(np.unique(resized["mask"]).tolist()) == {0, 4}


@pytest.mark.parametrize("cat_max_ratio", [0.75, 1.0])
def test_crops_are_drawn_again_while_one_class_dominates(cat_max_ratio):
    # 16 x 64: class 1 in the last 8 columns. A 16 x 16 crop at x (0..48, uniform) is balanced
    # (class 1 on 5..8 of its 16 columns, the rest class 0, so no class >= 0.75) for x in 45..48
    mask = np.zeros((16, 64), dtype=np.uint8)
    mask[:, 56:] = 1
    crop = BalancedCrop(16, 16, cat_max_ratio)
    balanced = 0
    for seed in range(300):
        torch.manual_seed(seed)
        pipeline = A.Compose([crop])
        reseed(pipeline)
        out = pipeline(image=CLASS_COLOURS[mask], mask=mask)
        np.testing.assert_array_equal(classes_of(out["image"].astype(np.float64)), out["mask"])
        balanced += out["mask"].mean() >= 5 / 16
    p_once = 4 / 49
    tries = 10 if cat_max_ratio < 1 else 1
    expected = 1 - (1 - p_once) ** tries  # 0.574 with 10 tries, 0.082 with one
    assert abs(balanced / 300 - expected) < 0.09
