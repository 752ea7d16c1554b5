"""Public alias of :mod:`fer_lightning.models.checkpoints` (``fer_lightning.checkpoints.load_model``
is the name earlier releases documented)."""

from fer_lightning.models.checkpoints import (
    CheckpointError,
    extract_state_dict,
    load_model,
    matching_architectures,
    read_checkpoint,
)

__all__ = [
    "CheckpointError",
    "extract_state_dict",
    "load_model",
    "matching_architectures",
    "read_checkpoint",
]
