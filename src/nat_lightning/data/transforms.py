"""albumentations pipelines: the paper's training augmentation and the centre-crop evaluation.

Both take an (H, W, 3) uint8 RGB array and return ``{"image": (3, H, W) float32 tensor}``.
Training follows timm's ``rand-m9-n2`` recipe with albumentations ops: RandomResizedCrop,
horizontal flip, a RandAugment-like policy, colour jitter, random erasing, normalisation.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from ..batch import IMAGENET_MEAN, IMAGENET_STD

MAX_MAGNITUDE = 10.0  # RandAugment's magnitude scale, as in the paper and timm
# what HFImageDataModule falls back to when no argument, preprocessor_config or LightningModule
# sets a value: timm's ImageNet evaluation
BUILT_IN_PREPROCESSING = {
    "image_size": 224,
    "crop_pct": 0.875,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
}
NO_CROP_FROM = 384  # ConvNeXtImageProcessor resizes without cropping from this shortest_edge on


def rand_augment(num_ops: int, magnitude: float) -> A.SomeOf:
    """``num_ops`` ops drawn (with replacement, as RandAugment does) from timm's list, each at
    ``magnitude`` on 0..10: the parameter ranges grow linearly with it, up to timm's maxima
    (rotate 30 deg, shear 0.3 = 16.7 deg, translate 45 %, enhance factors 1 +- 0.9, posterize to
    4 bits).
    """
    m = magnitude / MAX_MAGNITUDE
    shear, shift, factor = 16.7 * m, 0.45 * m, 0.9 * m
    ops = [
        A.NoOp(p=1.0),  # timm's Identity
        A.AutoContrast(p=1.0),
        A.Equalize(p=1.0),
        A.InvertImg(p=1.0),
        A.Affine(rotate=(-30 * m, 30 * m), p=1.0),
        A.Posterize(num_bits=(max(1, round(8 - 4 * m)), 8), p=1.0),
        A.Solarize(threshold_range=(1.0 - m, 1.0), p=1.0),
        A.ColorJitter(
            brightness=0, contrast=0, saturation=(max(0.0, 1 - factor), 1 + factor), hue=0, p=1.0
        ),
        A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=factor, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=factor, contrast_limit=0, p=1.0),
        A.Sharpen(alpha=(0.0, min(1.0, factor)), lightness=(1.0, 1.0), p=1.0),
        A.Affine(shear={"x": (-shear, shear), "y": (0, 0)}, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-shear, shear)}, p=1.0),
        A.Affine(translate_percent={"x": (-shift, shift), "y": (0, 0)}, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-shift, shift)}, p=1.0),
    ]
    return A.SomeOf(ops, n=num_ops, replace=True, p=1.0)


def train_transform(
    image_size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    rand_augment_ops: int = 2,
    rand_augment_magnitude: float = 9.0,
    color_jitter: float = 0.4,
    random_erasing: float = 0.25,
) -> A.Compose:
    steps = [
        A.RandomResizedCrop(
            size=(image_size, image_size), scale=tuple(crop_scale), interpolation=cv2.INTER_CUBIC
        )
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if rand_augment_ops > 0:
        steps.append(rand_augment(rand_augment_ops, rand_augment_magnitude))
    if color_jitter > 0:
        steps.append(
            A.ColorJitter(
                brightness=color_jitter,
                contrast=color_jitter,
                saturation=color_jitter,
                hue=0,
                p=1.0,
            )
        )
    if random_erasing > 0:
        # timm's RandomErasing: one box of 2-33 % of the area filled with per-pixel noise. A.Erasing
        # fails in albumentations 2.0.8 (missing seed), so one CoarseDropout hole with sides of
        # 0.14-0.58 of the image (area 0.02-0.33) stands in for it.
        steps.append(
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=(0.14, 0.58),
                hole_width_range=(0.14, 0.58),
                fill="random",
                p=random_erasing,
            )
        )
    steps += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(steps)


def eval_transform(
    image_size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    crop_pct: float = 0.875,
) -> A.Compose:
    """Resize the shorter side to ``int(image_size / crop_pct)`` (bicubic), then centre-crop
    ``image_size``. The 1e-9 keeps a crop_pct computed as crop / size (e.g. 224 / 248) from
    flooring one pixel short of ``size``."""
    resized = int(image_size / crop_pct + 1e-9)
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=resized, interpolation=cv2.INTER_CUBIC),
            A.CenterCrop(height=image_size, width=image_size),
            A.Normalize(mean=mean, std=std),
            ToTensorV2(),
        ]
    )


def reseed(transform: A.BaseCompose) -> None:
    """Draw the pipeline's randomness from torch's RNG, so ``seed_everything`` (and the per-worker
    seeds torch gives DataLoader workers) decide every augmentation. Without it, forked workers
    would share albumentations' generator state and augment in lock-step."""
    seed = int(torch.randint(2**63 - 1, ()))
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def read_preprocessor_config(path: str | Path) -> dict:
    """``image_mean``, ``image_std``, ``crop_pct`` and ``image_size`` from a transformers
    ``preprocessor_config.json`` (the file, or a folder that holds it); only the keys it has.

    ``size`` as an int or ``{"height", "width"}`` (ViTImageProcessor) is the image size, and a
    ``crop_pct`` is taken as written. ``{"shortest_edge"}`` is ConvNeXtImageProcessor's: the crop
    keeps ``crop_pct`` of the resized side, except from NO_CROP_FROM px on, where transformers
    resizes without cropping (crop_pct 1.0). With a ``crop_size`` (CLIP, BiT, DeiT: resize to
    ``size``, then centre-crop) the crop is the image size and crop / size the crop_pct.
    """
    path = Path(path)
    file = path / "preprocessor_config.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(
            f"preprocessor_config={str(path)!r} is neither a preprocessor_config.json "
            "nor a folder that contains one"
        )
    data = json.loads(file.read_text())
    out = {}
    for key in ("image_mean", "image_std"):
        if key in data:
            value = data[key]
            value = [value] * 3 if isinstance(value, (int, float)) else list(value)
            if len(value) != 3:
                raise ValueError(
                    f"{file}: {key}={data[key]} must have 1 or 3 values (one per RGB channel)"
                )
            out[key] = tuple(float(v) for v in value)
    if data.get("crop_pct") is not None:
        out["crop_pct"] = float(data["crop_pct"])
    size, crop = side_of(data.get("size")), side_of(data.get("crop_size"))
    if crop is not None:
        out["image_size"] = crop
        if size is not None and crop <= size:
            out["crop_pct"] = crop / size
    elif size is not None:
        out["image_size"] = size
        convnext = isinstance(data["size"], dict) and "shortest_edge" in data["size"]
        if convnext and size >= NO_CROP_FROM:
            out["crop_pct"] = 1.0
    return out


def side_of(size: int | dict | None) -> int | None:
    """The side of a square from a preprocessor config's ``size`` or ``crop_size``."""
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        side = size.get("height") or size.get("shortest_edge") or size.get("width")
        return None if side is None else int(side)
    return None


def config_preprocessing(path: str | Path) -> dict:
    """A preprocessor_config.json under HFImageDataModule's names: ``image_size``, ``crop_pct``,
    ``mean``, ``std`` (only those it gives); what a LightningModule's ``preprocessing`` holds."""
    names = {"image_size": "image_size", "crop_pct": "crop_pct", "image_mean": "mean",
             "image_std": "std"}  # fmt: skip
    return {names[key]: value for key, value in read_preprocessor_config(path).items()}
