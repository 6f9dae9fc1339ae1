from .datamodule import HFImageDataModule
from .digits import DIGITS_PARQUET, quickstart_datamodule

__all__ = ["DIGITS_PARQUET", "HFImageDataModule", "quickstart_datamodule"]
