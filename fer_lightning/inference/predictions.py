"""What recognition gives back, as a leaf that the recogniser, the tables, the video path and
the service share: :class:`FacePrediction` (one face) and :class:`FaceRecognizer` (what the
video path needs of a recogniser)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fer_lightning.faces.detectors import Detection, FaceDetector


@dataclass(frozen=True)
class FacePrediction:
    """One face: ``box`` (x0, y0, x1, y1) in the input's pixels, the detector's ``score``, the
    most likely ``label`` and ``probs`` (label -> probability, summing to 1)."""

    box: tuple[int, int, int, int]
    score: float
    label: str
    probs: dict[str, float]
    landmarks: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def confidence(self) -> float:
        """Probability of ``label``."""
        return self.probs[self.label]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: box (list of 4 ints), score, label, probs."""
        return {
            "box": [int(v) for v in self.box],
            "score": round(float(self.score), 4),
            "label": self.label,
            "probs": {k: round(float(v), 6) for k, v in self.probs.items()},
        }


class FaceRecognizer(Protocol):
    """A detector and a classifier of faces already found (an ``EmotionRecognizer``)."""

    detector: FaceDetector

    @property
    def labels(self) -> tuple[str, ...]: ...

    def recognize(
        self,
        bgr_images: Sequence[np.ndarray],
        detections: Sequence[list[Detection]],
        save_faces: str | Path | None = None,
        names: Sequence[str] | None = None,
    ) -> list[list[FacePrediction]]: ...
