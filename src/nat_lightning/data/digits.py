"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (scripts/make_digits_parquet.py)."""

from __future__ import annotations

from pathlib import Path

DIGITS_PARQUET = str(Path(__file__).resolve().parent / "assets" / "digits.parquet")


def quickstart_datamodule(**overrides):
    """The data of configs/quickstart.yaml: digits at 32 px with light, digit-safe augmentation."""
    from .datamodule import HFImageDataModule

    settings = dict(dataset=DIGITS_PARQUET, image_size=32, crop_pct=1.0, crop_scale=(0.7, 1.0), hflip=0.0,
                    rand_augment_ops=0, color_jitter=0.0, random_erasing=0.0, mean=(0.5, 0.5, 0.5),
                    std=(0.5, 0.5, 0.5), batch_size=64, num_workers=0)
    return HFImageDataModule(**{**settings, **overrides})
