"""What a loaded model is: its architecture, where it came from and what data it learned from.

A leaf module (no project imports), so that the loaders, the recogniser, the ONNX export and the
commands can all speak of the same record. ``load_model`` attaches one as ``net.provenance``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

#: Where a model came from: the authors' published checkpoint, a run of this project, or a
#: bare state dict whose history is not recorded.
PUBLISHED = "published"
TRAINED_HERE = "trained here"
STATE_DICT = "state dict"
ORIGINS = (PUBLISHED, TRAINED_HERE, STATE_DICT)

#: What the published Residual Masking Network checkpoints were trained on.
PUBLISHED_TRAINING_DATA: dict[str, Any] = {"dataset": "fer2013", "synthetic": False}


@dataclass(frozen=True)
class ModelProvenance:
    """``arch`` (registered name), ``origin`` (one of :data:`ORIGINS`), ``training_data``
    (``{"dataset": ..., "synthetic": bool}`` as training records it; ``None`` when unknown) and
    the ``path`` it was loaded from."""

    arch: str
    origin: str
    training_data: dict[str, Any] | None
    path: str

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, not {self.origin!r}.")

    @property
    def synthetic(self) -> bool:
        """Whether the model learned from this project's generated synthetic faces."""
        return bool(self.training_data and self.training_data.get("synthetic") is True)

    @property
    def dataset(self) -> str | None:
        """The training dataset's name, when recorded."""
        value = (self.training_data or {}).get("dataset")
        return str(value) if value is not None else None

    def _learned_from(self) -> str:
        if self.synthetic:
            return "on synthetic demo faces"
        if self.dataset:
            return f"on {self.dataset}"
        return "(training data not recorded)"

    def summary(self) -> str:
        """One line: ``resnet18 trained here on synthetic demo faces (outputs/.../model.pt)``."""
        if self.origin == STATE_DICT and self.training_data is None:
            return f"{self.arch} from a bare state dict, training data unknown ({self.path})"
        return f"{self.arch} {self.origin} {self._learned_from()} ({self.path})"

    @property
    def warning(self) -> str | None:
        """One sentence for a model trained on synthetic faces; ``None`` otherwise."""
        if not self.synthetic:
            return None
        return (
            f"Caution: {self.path} was trained on this project's synthetic demo faces, so its "
            "labels on real photos are not meaningful; use pretrained:resmasking_dropout1 or a "
            "model trained on a real dataset for real faces."
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready)."""
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelProvenance:
        """The inverse of :meth:`to_dict`; ``ValueError`` for anything that is not one."""
        if not isinstance(values, dict):
            raise ValueError(f"A provenance record is a mapping, not {type(values).__name__}.")
        training_data = values.get("training_data")
        if training_data is not None and not isinstance(training_data, dict):
            raise ValueError("A provenance record's training_data must be a mapping or null.")
        try:
            return cls(
                arch=str(values["arch"]),
                origin=str(values["origin"]),
                training_data=dict(training_data) if training_data is not None else None,
                path=str(values["path"]),
            )
        except KeyError as missing:
            raise ValueError(f"A provenance record lacks {missing}.") from None

    @classmethod
    def from_json(cls, text: str) -> ModelProvenance:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"A provenance record is not JSON ({error}).") from None
        return cls.from_dict(values)


def training_data_record(value: object) -> dict[str, Any] | None:
    """``value`` if it is a training-data record (a mapping with ``dataset`` and a boolean
    ``synthetic``), as a plain dict; ``None`` otherwise."""
    if not isinstance(value, dict):
        return None
    if not isinstance(value.get("synthetic"), bool) or not isinstance(value.get("dataset"), str):
        return None
    return dict(value)
