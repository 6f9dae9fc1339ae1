"""The embedded segmentation dataset: procedural shapes on textured backgrounds, 64 x 64 px.

Written once by scripts/make_shapes_parquet.py as two Hugging Face parquet files named by split
(``train.parquet``, ``validation.parquet``) in one folder, read through the same ``datasets``
folder loader as any other. Columns: ``image`` (JPEG), ``annotation`` (an "L" PNG of class ids)
and ``classes`` (the ids present, a list of ClassLabel whose names are the classes). This module
describes the asset and imports nothing of the package: ``HFSegmentationDataModule.embedded``
(``segmentation.shapes_datamodule``) builds the data module on it.
"""

from __future__ import annotations

from pathlib import Path

SHAPES_DATASET = str(Path(__file__).resolve().parent / "assets" / "shapes")
SHAPES_CLASSES = ("background", "circle", "square", "triangle", "ring")

# configs/seg_quickstart.yaml's data section: the 64 px images as they are, light scaling
SHAPES_QUICKSTART = {
    "crop_size": 64,
    "scale_range": (0.75, 1.5),
    "eval_size": 64,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "batch_size": 16,
    "num_workers": 0,
}
