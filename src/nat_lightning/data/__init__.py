"""Image classification data: the DataModule, its transforms, the embedded digits dataset."""

from .datamodule import HFImageDataModule
from .digits import DIGITS_PARQUET, quickstart_datamodule

__all__ = ["DIGITS_PARQUET", "HFImageDataModule", "quickstart_datamodule"]
