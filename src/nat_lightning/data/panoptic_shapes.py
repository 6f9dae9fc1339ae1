"""The embedded panoptic dataset: shapes (things) over sky and ground (stuff), 64 x 64 px.

Written once by scripts/make_panoptic_shapes.py as two Hugging Face parquet files named by split
(``train.parquet``: 320 images, ``validation.parquet``: 64) in one folder, read through the same
``datasets`` folder loader as any other. COCO-panoptic columns: ``image`` (JPEG), ``panoptic``
(an RGB PNG of segment ids, id = R + 256 G + 256^2 B, 0 void) and ``segments_info`` (a list of
{id, category_id, iscrowd}, category_id a ClassLabel whose names are the classes). This module
describes the asset and imports nothing of the package: ``HFPanopticDataModule.embedded`` builds
the data module on it.
"""

from __future__ import annotations

from pathlib import Path

PANOPTIC_SHAPES_DATASET = str(Path(__file__).resolve().parent / "assets" / "panoptic_shapes")
PANOPTIC_SHAPES_CLASSES = ("circle", "square", "triangle", "sky", "ground")
PANOPTIC_SHAPES_THINGS = ("circle", "square", "triangle")  # the rest are stuff

# the quickstart data settings: the 64 px images, light scale jitter (large-scale jitter, 0.1-2.0,
# is for photographs), the 0.5 normalisation the shapes are drawn for
PANOPTIC_SHAPES_QUICKSTART = {
    "thing_classes": PANOPTIC_SHAPES_THINGS,
    "crop_size": 64,
    "scale_range": (0.75, 1.5),
    "eval_size": 64,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "batch_size": 16,
    "num_workers": 0,
}
