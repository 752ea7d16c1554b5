"""Datasets: CSV readers and cache, converters, the synthetic faces, and the LightningDataModule."""

from fer_lightning.data.datamodule import FERDataModule
from fer_lightning.data.errors import DatasetError, DatasetNotFoundError

__all__ = ["DatasetError", "DatasetNotFoundError", "FERDataModule"]
