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


class UserError(ValueError):
    """A mistake in the command, its values or the files it names: printed as one line, exit
    status 2. (A ValueError, so that code checking values may raise it where a ValueError is
    expected.)"""


def config_number(
    cfg: Any,
    key: str,
    kind: type,
    optional: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """The number at ``key`` of a command's config as ``kind`` (int or float), within
    [``minimum``, ``maximum``]; a :class:`UserError` naming the key and the value otherwise."""
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{key}={value!r}: expected a number.")
    if kind is int and value != int(value):
        raise UserError(f"{key}={value!r}: expected a whole number.")
    if minimum is not None and value < minimum:
        raise UserError(f"{key}={value!r}: must be at least {minimum:g}.")
    if maximum is not None and value > maximum:
        raise UserError(f"{key}={value!r}: must be at most {maximum:g}.")
    return kind(value)


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
