"""Image data: the classification and segmentation DataModules, their transforms, and the
embedded digits (classification) and shapes (segmentation) datasets."""

from .datamodule import HFImageDataModule, quickstart_datamodule
from .digits import DIGITS_PARQUET
from .segmentation import HFSegmentationDataModule, shapes_datamodule
from .shapes import SHAPES_CLASSES, SHAPES_DATASET

__all__ = [
    "DIGITS_PARQUET",
    "SHAPES_CLASSES",
    "SHAPES_DATASET",
    "HFImageDataModule",
    "HFSegmentationDataModule",
    "quickstart_datamodule",
    "shapes_datamodule",
]
