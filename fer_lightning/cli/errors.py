"""The errors a user can cause, and how the commands report them: one line, no traceback."""

from __future__ import annotations

from fer_lightning.data.errors import DatasetError
from fer_lightning.faces.detectors import DetectorUnavailableError
from fer_lightning.faces.images import ImageError
from fer_lightning.models.backbone import PretrainedWeightsError
from fer_lightning.models.checkpoints import CheckpointError
from fer_lightning.runtime import DeviceUnavailableError
from fer_lightning.training.checkpoint_io import CheckpointWriteError
from fer_lightning.training.module import NonFiniteLossError


class UserError(Exception):
    """A mistake in the command or the files it names: printed as one message, exit status 2."""


# Errors whose message is meant for the user: printed without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    CheckpointError,
    CheckpointWriteError,
    DatasetError,
    DetectorUnavailableError,
    DeviceUnavailableError,
    ImageError,
    NonFiniteLossError,
    PretrainedWeightsError,
)
