"""albumentations pipelines that move an image and its mask together (semantic segmentation).

mmsegmentation's ADE20K recipe: training rescales the shorter side to ``base_size`` times a
random ratio in ``scale_range`` (bilinear for the image, nearest for the mask, as every mask
resize here), pads to the crop (image 0, mask IGNORE_PIXEL), takes a random crop (drawn again, up to
10 times, while one class covers ``cat_max_ratio`` of it), flips, distorts the photometry of the
image only (mmseg's PhotoMetricDistortion) and normalises. Evaluation resizes
the shorter side to ``eval_size``, keeping the aspect, then pads to a multiple of 32 (mask
IGNORE_PIXEL).
Every pipeline takes ``image`` (H, W, 3) uint8 and ``mask`` (H, W) ids, and returns a (3, H, W)
float32 tensor and an (H, W) tensor of ids.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from ..batch import IGNORE_PIXEL

PAD_DIVISOR = 32  # evaluation sizes divide by NAT's total stride
CROP_TRIES = 10  # mmseg's tries for a crop that no class dominates


class BalancedCrop(A.RandomCrop):
    """mmseg's RandomCrop with ``cat_max_ratio``: up to CROP_TRIES random crops, keeping the
    first in which more than one class (IGNORE_PIXEL aside) shows and none covers
    ``cat_max_ratio`` or more of the labelled pixels; else the last one. ``cat_max_ratio=1`` takes
    the first."""

    def __init__(self, height: int, width: int, cat_max_ratio: float = 0.75, p: float = 1.0):
        super().__init__(height=height, width=width, p=p)
        self.cat_max_ratio = cat_max_ratio

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        mask = data.get("mask")
        for _ in range(CROP_TRIES if mask is not None and self.cat_max_ratio < 1 else 1):
            crop = super().get_params_dependent_on_data(params, data)
            x_min, y_min, x_max, y_max = crop["crop_coords"]
            ids, counts = np.unique(mask[y_min:y_max, x_min:x_max], return_counts=True)
            counts = counts[ids != IGNORE_PIXEL]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return crop


def photometric_distortion() -> list[A.BasicTransform]:
    """mmseg's PhotoMetricDistortion, each step with probability 0.5: brightness +-32 (of 255),
    contrast x [0.5, 1.5], saturation x [0.5, 1.5], hue +-18 (OpenCV's 0..180 scale, so 0.1)."""
    return [
        A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0, contrast_limit=0.5, p=0.5),
        A.ColorJitter(brightness=0, contrast=0, saturation=(0.5, 1.5), hue=0, p=0.5),
        A.ColorJitter(brightness=0, contrast=0, saturation=0, hue=0.1, p=0.5),
    ]


def pad(min_size: int | None = None, divisor: int | None = None) -> A.PadIfNeeded:
    """Pad bottom and right, the image with 0 and the mask with IGNORE_PIXEL, to at least
    ``min_size`` per side or to multiples of ``divisor``."""
    return A.PadIfNeeded(
        min_height=min_size,
        min_width=min_size,
        pad_height_divisor=divisor,
        pad_width_divisor=divisor,
        position="top_left",
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=IGNORE_PIXEL,
    )


def finish(mean: tuple[float, ...], std: tuple[float, ...]) -> list[A.BasicTransform]:
    return [A.Normalize(mean=mean, std=std), ToTensorV2()]


def train_pipeline(
    crop_size: int,
    base_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: float = 0.5,
    photometric: bool = True,
    cat_max_ratio: float = 0.75,
) -> A.Compose:
    """Random scale, pad to the crop, random crop (see BalancedCrop), flip, photometric
    distortion, normalise."""
    low, high = (max(1, round(base_size * s)) for s in scale_range)
    steps = [
        # a list of sizes: one drawn per call, so the ratio is uniform in scale_range
        A.SmallestMaxSize(
            max_size=list(range(low, high + 1)),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
        ),
        pad(min_size=crop_size),
        BalancedCrop(crop_size, crop_size, cat_max_ratio),
    ]
    if hflip > 0:
        steps.append(A.HorizontalFlip(p=hflip))
    if photometric:
        steps += photometric_distortion()
    return A.Compose(steps + finish(mean, std))


def eval_resize(eval_size: int) -> A.Compose:
    """The shorter side to ``eval_size``, keeping the aspect: the ``content`` size of a batch."""
    return A.Compose(
        [
            A.SmallestMaxSize(
                max_size=eval_size,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        ]
    )


def eval_finish(mean: tuple[float, ...], std: tuple[float, ...]) -> A.Compose:
    """Pad bottom and right to multiples of PAD_DIVISOR (image 0, mask IGNORE_PIXEL), normalise."""
    return A.Compose([pad(divisor=PAD_DIVISOR), *finish(mean, std)])
