"""albumentations pipelines: the paper's training augmentation and the centre-crop evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def rand_augment(num_ops: int, magnitude: float) -> A.BasicTransform:
    """A RandAugment-like policy: ``num_ops`` of these ops, strength ``magnitude`` on 0..10."""
    m = magnitude / 10.0
    ops = [
        A.Affine(rotate=(-30 * m, 30 * m), p=1.0),
        A.Affine(shear={"x": (-17 * m, 17 * m), "y": (0, 0)}, p=1.0),
        A.Affine(shear={"x": (0, 0), "y": (-17 * m, 17 * m)}, p=1.0),
        A.Affine(translate_percent={"x": (-0.45 * m, 0.45 * m), "y": (0, 0)}, p=1.0),
        A.Affine(translate_percent={"x": (0, 0), "y": (-0.45 * m, 0.45 * m)}, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0.9 * m, contrast_limit=0, p=1.0),
        A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=0.9 * m, p=1.0),
        A.ColorJitter(brightness=0, contrast=0, saturation=0.9 * m, hue=0, p=1.0),
        A.Sharpen(alpha=(0.1, max(0.1, 0.9 * m)), p=1.0),
        A.Posterize(num_bits=(max(1, int(8 - 4 * m)), 8), p=1.0),
        A.Solarize(threshold_range=(1 - m, 1.0), p=1.0),
        A.Equalize(p=1.0),
        A.InvertImg(p=1.0),
        A.AutoContrast(p=1.0),
    ]
    return A.SomeOf(ops, n=num_ops, replace=False, p=1.0)


def train_transform(image_size: int, mean, std, crop_scale=(0.08, 1.0), hflip: float = 0.5,
                    rand_augment_ops: int = 2, rand_augment_magnitude: float = 9, color_jitter: float = 0.4,
                    random_erasing: float = 0.25) -> A.Compose:
    steps = [
        A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(crop_scale), interpolation=cv2.INTER_CUBIC),
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if rand_augment_ops > 0:
        steps.append(rand_augment(rand_augment_ops, rand_augment_magnitude))
    if color_jitter > 0:
        steps.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0))
    steps.append(A.Normalize(mean=mean, std=std))
    if random_erasing > 0:  # on normalised pixels, filled with noise, as timm's RandomErasing
        steps.append(A.Erasing(scale=(0.02, 1 / 3), fill="random", p=random_erasing))
    return A.Compose(steps)


def eval_transform(image_size: int, mean, std, crop_pct: float = 0.875) -> A.Compose:
    """Resize the shorter side to ``image_size / crop_pct``, then centre-crop ``image_size``."""
    resize = int(round(image_size / crop_pct))
    return A.Compose([
        A.SmallestMaxSize(max_size=resize, interpolation=cv2.INTER_CUBIC),
        A.CenterCrop(height=image_size, width=image_size),
        A.Normalize(mean=mean, std=std),
    ])


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) float32 -> (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def read_preprocessor_config(path: str | Path) -> dict:
    """image_mean, image_std and crop_pct (when present) from a preprocessor_config.json."""
    path = Path(path)
    if path.is_dir():
        path = path / "preprocessor_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"preprocessor_config={str(path)!r} does not exist")
    data = json.loads(path.read_text())
    out = {k: data[k] for k in ("image_mean", "image_std", "crop_pct") if k in data}
    for key in ("image_mean", "image_std"):
        if key in out and len(out[key]) != 3:
            raise ValueError(f"{path}: {key} must have 3 values, got {key}={out[key]}")
    return out
