"""Image data: the classification and segmentation DataModules, their transforms, and the
embedded digits (classification) and shapes (segmentation) datasets."""

from .datamodule import HFImageDataModule, quickstart_datamodule
from .digits import DIGITS_PARQUET
from .panoptic_shapes import PANOPTIC_SHAPES_CLASSES, PANOPTIC_SHAPES_DATASET
from .segmentation import HFSegmentationDataModule, shapes_datamodule
from .shapes import SHAPES_CLASSES, SHAPES_DATASET
from .universal import HFPanopticDataModule, panoptic_shapes_datamodule

__all__ = [
    "DIGITS_PARQUET",
    "PANOPTIC_SHAPES_CLASSES",
    "PANOPTIC_SHAPES_DATASET",
    "SHAPES_CLASSES",
    "SHAPES_DATASET",
    "HFImageDataModule",
    "HFPanopticDataModule",
    "HFSegmentationDataModule",
    "panoptic_shapes_datamodule",
    "quickstart_datamodule",
    "shapes_datamodule",
]
