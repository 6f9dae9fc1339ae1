"""The embedded default dataset: scikit-learn's 8x8 handwritten digits, 1,797 images in 10 classes.

Written once by scripts/make_digits_parquet.py as a Hugging Face parquet (PNG bytes in an Image
column, a ClassLabel "label" with names "0".."9"), and read through the same ``datasets`` parquet
loader as any other parquet file. This module describes the asset and imports nothing of the
package: ``datamodule.quickstart_datamodule`` builds the data module on it.
"""

from __future__ import annotations

from pathlib import Path

DIGITS_PARQUET = str(Path(__file__).resolve().parent / "assets" / "digits.parquet")

# configs/quickstart.yaml's data section: 32 px, light augmentation that keeps digits legible
# (no flips, no RandAugment, crops of at least 70 % of the area)
QUICKSTART = {
    "image_size": 32,
    "crop_pct": 1.0,
    "crop_scale": (0.7, 1.0),
    "hflip": 0.0,
    "rand_augment_ops": 0,
    "color_jitter": 0.0,
    "random_erasing": 0.0,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "batch_size": 64,
    "num_workers": 0,
}
