"""The CPU-side training augmentation: an albumentations pipeline at the native 48x48.

Configured as an ordered mapping ``{TransformName: {argument: value}}`` (a Hydra dict); the
paper's (horizontal flip, rotation within +-30 degrees) is the default of ``conf/data/common.yaml``.

``border_mode`` and ``interpolation`` accept OpenCV constant names. Unknown transforms, and the
arguments albumentations would only warn about and ignore (outdated names), are errors.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import cv2

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no online version check on import
import albumentations as A

_CV2_CONSTANT_ARGS = ("border_mode", "interpolation", "mask_interpolation")


def build_augment(config: Mapping[str, Mapping[str, Any] | None] | None) -> A.Compose | None:
    """An albumentations ``Compose`` from ``config`` (None or empty -> None: no augmentation).

    Raises ``ValueError`` naming the transform and argument when the config is wrong.
    """
    transforms = []
    for name, args in (config or {}).items():
        cls = getattr(A, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            raise ValueError(f"augment: {name!r} is not an albumentations transform.")
        kwargs = {key: _cv2_constant(name, key, value) for key, value in dict(args or {}).items()}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                transforms.append(cls(**kwargs))
        except (TypeError, ValueError, UserWarning) as err:
            raise ValueError(f"augment.{name}: {err}") from None
    return A.Compose(transforms) if transforms else None


def _cv2_constant(transform: str, key: str, value: Any) -> Any:
    if key in _CV2_CONSTANT_ARGS and isinstance(value, str):
        constant = getattr(cv2, value, None)
        if not isinstance(constant, int):
            raise ValueError(f"augment.{transform}.{key}: {value!r} is not an OpenCV constant.")
        return constant
    # OmegaConf lists arrive as ListConfig; albumentations wants tuples for ranges.
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return tuple(value)
    return value
