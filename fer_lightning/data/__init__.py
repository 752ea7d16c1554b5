"""Datasets, the LightningDataModule and the batched device-side preprocessing."""

from fer_lightning.data.device_transforms import (
    TTA_ANGLES,
    rotate_and_flip,
    to_model_input,
    tta_views,
)
from fer_lightning.data.errors import DatasetError, DatasetNotFoundError

__all__ = [
    "TTA_ANGLES",
    "DatasetError",
    "DatasetNotFoundError",
    "FERDataModule",
    "rotate_and_flip",
    "to_model_input",
    "tta_views",
]


def __getattr__(name: str):
    # The DataModule pulls in Lightning and albumentations: import it only when asked for, so
    # inference (which needs just the device transforms) stays light.
    if name == "FERDataModule":
        from fer_lightning.data.datamodule import FERDataModule

        return FERDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
