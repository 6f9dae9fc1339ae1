"""export.py: the preprocessor_config.json that transformers reads into our evaluation transform,
the modes of exported files, and the onnx extra."""

import functools
import json
import os
import stat
import sys

import albumentations as A
import cv2
import lightning as L
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from sklearn.datasets import load_sample_images
from transformers import AutoImageProcessor

from nat_lightning import NatClassifier
from nat_lightning.data import quickstart_datamodule
from nat_lightning.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    read_preprocessor_config,
)
from nat_lightning.export import export
from nat_lightning.processor_config import preprocessor_config

# Mean |difference| in 8-bit levels after 4x4 average pooling. PIL's antialiased bicubic against
# cv2's INTER_CUBIC, and the longer side that albumentations rounds and transformers floors (see
# preprocessor_config), stay under 5 on these images; a squash, a crop that ignores crop_pct
# (at 32 px and 0.875 a 14 % zoom, the smallest of these changes) or a corner crop are 7.8 or more
# away (test_the_tolerance_catches_a_squash_or_a_wrong_crop).
TOLERANCE = 6.0
HALF = (0.5, 0.5, 0.5)
SETTINGS = [  # image_size, crop_pct, mean, std; 384 is where ConvNextImageProcessor stops cropping
    pytest.param(224, 0.875, IMAGENET_MEAN, IMAGENET_STD, id="224-0.875"),
    pytest.param(384, 0.95, IMAGENET_MEAN, IMAGENET_STD, id="384-0.95"),
    pytest.param(32, 0.875, HALF, HALF, id="32-0.875"),
    pytest.param(32, 1.0, HALF, HALF, id="32-1.0"),
]


@functools.cache
def photos(image_size: int, crop_pct: float) -> dict[str, np.ndarray]:
    """Two photographs (427x640) cut to five aspect ratios; for small sizes downscaled first
    (Lanczos), to a shorter side 1.5x the resize target, as a small-image dataset would hold them."""
    out = {}
    for name, image in zip(("china", "flower"), load_sample_images().images):
        h, w = image.shape[:2]
        cuts = {
            "3:2": image,
            "1:1": image[:, 100 : 100 + h],
            "3:4": image[:, 150 : 150 + h * 3 // 4],
            "1:3": image[100 : 100 + w // 3],
            "16:9 tall": image[:, 200 : 200 + h * 9 // 16],
        }
        for ratio, cut in cuts.items():
            short = int(image_size / crop_pct * 1.5)
            if short < min(cut.shape[:2]):
                k = short / min(cut.shape[:2])
                size = (round(cut.shape[1] * k), round(cut.shape[0] * k))
                cut = np.asarray(Image.fromarray(cut).resize(size, Image.LANCZOS))
            out[f"{name} {ratio} {cut.shape[0]}x{cut.shape[1]}"] = np.ascontiguousarray(cut)
    return out


def distance(a, b, std) -> float:
    """Normalised (3, H, W) arrays back in 8-bit levels, pooled 4x4, mean |a - b|."""
    levels = torch.tensor(std)[:, None, None] * 255
    a, b = (torch.nn.functional.avg_pool2d(torch.as_tensor(x) * levels, 4) for x in (a, b))
    return float((a - b).abs().mean())


def load_processor(folder):
    """transformers' own loader, PIL backend: what a user without torchvision gets."""
    return AutoImageProcessor.from_pretrained(folder, backend="pil")


def processor_for(tmp_path, image_size, crop_pct, mean, std):
    data = {"image_size": image_size, "crop_pct": crop_pct, "mean": mean, "std": std}
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(preprocessor_config({"datamodule_hyper_parameters": data}))
    )
    return load_processor(tmp_path)


def pixels(processor, image) -> np.ndarray:
    return processor(image, return_tensors="np")["pixel_values"][0]


@pytest.mark.parametrize("image_size, crop_pct, mean, std", SETTINGS)
def test_transformers_processor_matches_eval_transform(tmp_path, image_size, crop_pct, mean, std):
    processor = processor_for(tmp_path, image_size, crop_pct, mean, std)
    ours = eval_transform(image_size, mean, std, crop_pct)
    for name, image in photos(image_size, crop_pct).items():
        expected = ours(image=image)["image"].numpy()
        got = pixels(processor, image)
        assert got.shape == expected.shape == (3, image_size, image_size), name
        assert distance(got, expected, std) < TOLERANCE, name


def wrong_transforms(image_size, crop_pct, mean, std) -> dict[str, A.Compose]:
    finish = [A.Normalize(mean=mean, std=std), ToTensorV2()]
    resize = A.SmallestMaxSize(max_size=int(image_size / crop_pct), interpolation=cv2.INTER_CUBIC)
    return {
        "squash": A.Compose(
            [A.Resize(image_size, image_size, interpolation=cv2.INTER_CUBIC), *finish]
        ),
        "crop_pct ignored": eval_transform(image_size, mean, std, crop_pct=1.0),
        "corner crop": A.Compose([resize, A.Crop(0, 0, image_size, image_size), *finish]),
    }


@pytest.mark.parametrize("image_size, crop_pct, mean, std", SETTINGS)
def test_the_tolerance_catches_a_squash_or_a_wrong_crop(tmp_path, image_size, crop_pct, mean, std):
    processor = processor_for(tmp_path, image_size, crop_pct, mean, std)
    for name, image in photos(image_size, crop_pct).items():
        got = pixels(processor, image)
        for kind, wrong in wrong_transforms(image_size, crop_pct, mean, std).items():
            if "1:1" in name and (kind == "squash" or crop_pct == 1.0):
                continue  # a square is not squashed, nor cropped at crop_pct 1
            if kind == "crop_pct ignored" and crop_pct == 1.0:
                continue
            assert distance(got, wrong(image=image)["image"].numpy(), std) > TOLERANCE, (kind, name)


def test_the_old_vit_config_squashes(tmp_path):
    """What preprocessor_config wrote before: ViTImageProcessor with crop_pct, which it ignores."""
    vit = {
        "image_processor_type": "ViTImageProcessor",
        "size": {"height": 224, "width": 224},
        "crop_pct": 0.875,
        "resample": 3,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(vit))
    processor = load_processor(tmp_path)
    ours = eval_transform(224, IMAGENET_MEAN, IMAGENET_STD, 0.875)
    image = next(iter(photos(224, 0.875).values()))
    expected = ours(image=image)["image"].numpy()
    assert distance(pixels(processor, image), expected, IMAGENET_STD) > 3 * TOLERANCE


def test_old_checkpoints_fall_back_to_imagenet_at_224():
    for data in (None, {}, {"image_size": None, "crop_pct": None, "mean": None, "std": None}):
        config = preprocessor_config({"datamodule_hyper_parameters": data})
        assert config["size"] == {"shortest_edge": 256}  # int(224 / 0.875)
        assert config["crop_size"] == {"height": 224, "width": 224}
        assert config["image_mean"] == list(IMAGENET_MEAN)
        assert config["image_std"] == list(IMAGENET_STD)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """One optimizer step of nat_pico on the embedded digits at crop_pct 0.9, saved by Lightning."""
    root = tmp_path_factory.mktemp("ckpt")
    data = quickstart_datamodule(crop_pct=0.9)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(NatClassifier(model="nat_pico", num_classes=data.num_classes), datamodule=data)
    trainer.save_checkpoint(root / "last.ckpt")
    return root / "last.ckpt"


def modes(root) -> dict[str, int]:
    return {
        str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode)
        for p in [root, *root.rglob("*")]
    }


@pytest.fixture
def private_umask():
    """A umask that would make new files 0600: the export sets its modes itself."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def test_exported_folder_is_0755_with_0644_files_and_transformers_reads_it(
    checkpoint, tmp_path, private_umask
):
    out = export(str(checkpoint), str(tmp_path / "digits"))
    got = modes(out)
    assert got.pop("digits") == 0o755
    assert set(got) == {
        "digits/config.json",
        "digits/model.safetensors",
        "digits/preprocessor_config.json",
        "digits/README.md",
    }
    assert set(got.values()) == {0o644}
    processor = load_processor(out)
    for name, image in photos(32, 0.9).items():
        expected = eval_transform(32, HALF, HALF, 0.9)(image=image)["image"].numpy()
        assert distance(pixels(processor, image), expected, HALF) < TOLERANCE, name


def test_the_exported_config_reads_back_into_the_same_eval_transform(checkpoint, tmp_path):
    """HFImageDataModule(preprocessor_config=folder) fine-tunes from an export: the same pixels."""
    out = export(str(checkpoint), str(tmp_path / "digits"))
    settings = read_preprocessor_config(out)
    assert settings["image_mean"] == settings["image_std"] == HALF
    again = eval_transform(settings["image_size"], HALF, HALF, settings["crop_pct"])
    for name, image in photos(32, 0.9).items():
        expected = eval_transform(32, HALF, HALF, 0.9)(image=image)["image"]
        assert torch.equal(again(image=image)["image"], expected), name


def test_onnx_file_is_0644(checkpoint, tmp_path, private_umask):
    pytest.importorskip("onnx")
    path = export(str(checkpoint), str(tmp_path / "model.onnx"), format="onnx")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_onnx_without_onnx_names_the_extra(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ModuleNotFoundError, match=r'pip install "nat-lightning\[onnx\]"'):
        export(str(checkpoint), str(tmp_path / "model.onnx"), format="onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "size_in, size_out", [((16, 16), 6), ((2, 3), 6), ((7, 5), 3), ((9, 13), 2), ((1, 1), 1)]
)
def test_fixed_adaptive_pool_equals_torchs_adaptive_pool(size_in, size_out):
    """The ONNX export's stand-in for UPerNet's pyramid pooling, against torch's own op."""
    from nat_lightning.export import FixedAdaptivePool

    x = torch.randn(2, 3, *size_in, dtype=torch.float64)
    pool = FixedAdaptivePool(size_in, (size_out, size_out)).double()
    torch.testing.assert_close(pool(x), torch.nn.functional.adaptive_avg_pool2d(x, size_out))
