"""The albumentations pipelines: evaluation geometry and normalisation against hand-computed
values, training output and reproducibility, RandAugment's magnitude scale, preprocessor configs."""

import json

import albumentations as A
import numpy as np
import pytest
import torch

from nat_lightning.data.transforms import (
    config_preprocessing,
    eval_transform,
    rand_augment,
    read_preprocessor_config,
    reseed,
    train_transform,
)


def square_on_black(side: int = 32, inner: int = 16) -> np.ndarray:
    image = np.zeros((side, side, 3), np.uint8)
    start = (side - inner) // 2
    image[start : start + inner, start : start + inner] = 255
    return image


def test_eval_resizes_the_shorter_side_to_size_over_crop_pct_then_centre_crops():
    # crop_pct 0.5: 32 px -> int(8 / 0.5) = 16 px; the square becomes 8 px and fills the 8 px crop
    out = eval_transform(8, (0, 0, 0), (1, 1, 1), crop_pct=0.5)(image=square_on_black())["image"]
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert out[:, 1:-1, 1:-1].min() > 0.9  # away from interpolated edges: white
    # crop_pct 1.0: 32 px -> 8 px, the square becomes 4 px in the middle of a black border
    out = eval_transform(8, (0, 0, 0), (1, 1, 1), crop_pct=1.0)(image=square_on_black())["image"]
    assert out[:, 0, :].max() < 0.1 and out[:, 3:5, 3:5].min() > 0.9


def test_eval_keeps_the_aspect_ratio_and_crops_the_centre():
    image = np.zeros((20, 60, 3), np.uint8)  # H 20, W 60: left, middle, right thirds
    image[:, :20], image[:, 20:40], image[:, 40:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    out = eval_transform(10, (0, 0, 0), (1, 1, 1), crop_pct=1.0)(image=image)["image"]
    assert out.shape == (3, 10, 10)  # 20x60 -> 10x30, centre 10x10 = the middle third
    torch.testing.assert_close(
        out[:, 2:-2, 2:-2], torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 6, 6)
    )


def test_normalisation_uses_mean_and_std():
    image = np.full((4, 4, 3), (51, 102, 153), np.uint8)  # 0.2, 0.4, 0.6
    out = eval_transform(4, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5), crop_pct=1.0)(image=image)["image"]
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([0.2, 0.4, 0.6]))


def test_train_pipeline_output_and_reproducibility_from_torch_seed():
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    transform = train_transform(
        64, rand_augment_ops=2, rand_augment_magnitude=9, random_erasing=1.0
    )
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        reseed(transform)
        outputs.append(transform(image=image)["image"])
    assert outputs[0].shape == (3, 64, 64) and outputs[0].dtype == torch.float32
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def test_horizontal_flip_and_crop_scale():
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8] = 255  # white left half
    flip = train_transform(
        16,
        (0, 0, 0),
        (1, 1, 1),
        crop_scale=(1.0, 1.0),
        hflip=1.0,
        rand_augment_ops=0,
        color_jitter=0.0,
        random_erasing=0.0,
    )
    reseed(flip)
    out = flip(image=image)["image"]
    assert out[:, :, -4:].min() > 0.9 and out[:, :, :4].max() < 0.1  # white is now on the right


def test_rand_augment_draws_n_ops_scaled_by_magnitude():
    policy = rand_augment(3, 9)
    assert isinstance(policy, A.SomeOf) and policy.n == 3 and policy.replace
    rotate = next(
        t for t in policy.transforms if isinstance(t, A.Affine) and t.rotate != (0.0, 0.0)
    )
    assert rotate.rotate == pytest.approx((-27.0, 27.0))  # timm's 30 degrees at magnitude 10
    solarize = next(t for t in policy.transforms if isinstance(t, A.Solarize))
    assert solarize.threshold_range == pytest.approx((0.1, 1.0))


def test_preprocessor_config_from_file_or_folder(tmp_path):
    config = {
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": 0.25,
        "crop_pct": 0.9,
        "size": {"height": 384, "width": 384},
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    expected = {
        "image_mean": (0.5, 0.5, 0.5),
        "image_std": (0.25, 0.25, 0.25),
        "crop_pct": 0.9,
        "image_size": 384,
    }
    assert read_preprocessor_config(tmp_path) == expected
    assert read_preprocessor_config(tmp_path / "preprocessor_config.json") == expected


@pytest.mark.parametrize(
    "config,expected",
    [
        # ViTImageProcessor: resize to size; crop_pct as written (NAT's Hub files carry 0.875)
        ({"size": {"height": 384, "width": 384}}, {"image_size": 384}),
        ({"size": 224, "crop_pct": 0.875}, {"image_size": 224, "crop_pct": 0.875}),
        # ConvNeXtImageProcessor: crop_pct below 384 px, no crop from 384 px on
        ({"size": {"shortest_edge": 224}, "crop_pct": 0.875}, {"image_size": 224, "crop_pct": 0.875}),
        ({"size": {"shortest_edge": 383}, "crop_pct": 0.9}, {"image_size": 383, "crop_pct": 0.9}),
        ({"size": {"shortest_edge": 384}, "crop_pct": 0.875}, {"image_size": 384, "crop_pct": 1.0}),
        ({"size": {"shortest_edge": 512}}, {"image_size": 512, "crop_pct": 1.0}),
        # resize then centre-crop (CLIP, BiT; DeiT): crop / size
        ({"size": {"shortest_edge": 256}, "crop_size": {"height": 224}}, {"image_size": 224, "crop_pct": 0.875}),
        ({"size": {"height": 256, "width": 256}, "crop_size": 224}, {"image_size": 224, "crop_pct": 0.875}),
        ({"crop_size": {"height": 160, "width": 160}}, {"image_size": 160}),
    ],
)  # fmt: skip
def test_preprocessor_config_styles(tmp_path, config, expected):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    assert read_preprocessor_config(tmp_path) == expected


def test_preprocessor_config_under_the_data_module_names(tmp_path):
    config = {"image_mean": 0.5, "image_std": [0.1, 0.2, 0.3], "size": {"shortest_edge": 384}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    assert config_preprocessing(tmp_path) == {
        "image_size": 384,
        "crop_pct": 1.0,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.1, 0.2, 0.3),
    }


def test_a_crop_pct_from_a_ratio_resizes_to_the_exact_side():
    # 100 / (100 / 127) is 126.99999999999999 in floats: the resize must still be 127 px
    assert 100 / (100 / 127) < 127
    assert eval_transform(100, crop_pct=100 / 127).transforms[0].max_size == 127
    assert eval_transform(224, crop_pct=0.875).transforms[0].max_size == 256
    assert eval_transform(224, crop_pct=0.9).transforms[0].max_size == 248  # floor of 248.9


def test_preprocessor_config_errors(tmp_path):
    with pytest.raises(
        ValueError, match="preprocessor_config=.*nowhere.*neither a preprocessor_config.json"
    ):
        read_preprocessor_config(tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text(json.dumps({"image_mean": [0.1, 0.2]}))
    with pytest.raises(ValueError, match=r"image_mean=\[0.1, 0.2\] must have 1 or 3 values"):
        read_preprocessor_config(tmp_path / "bad.json")
