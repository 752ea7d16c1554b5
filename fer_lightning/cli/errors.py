"""The errors a user can cause, and how the commands report them: one line, no traceback."""

from __future__ import annotations

from typing import Any

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


def instantiate(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a user's mistake through as itself: Hydra wraps
    what a constructor raises in ``InstantiationException``; a user error (or a ValueError
    about a config value) is raised unwrapped, so the command prints it as one line."""
    import hydra.utils
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(config, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, USER_ERRORS):
            raise cause from None
        if isinstance(cause, ValueError):
            raise UserError(str(cause)) from None
        raise
