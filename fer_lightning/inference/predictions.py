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
    most likely ``label`` and ``probs`` (label -> probability, summing to 1).

    In tracked videos also ``track_id`` (the person, from 1; :mod:`.tracking`) and
    ``smoothed_probs`` (``probs`` averaged over the track's recent frames; :mod:`.smoothing`);
    both None otherwise."""

    box: tuple[int, int, int, int]
    score: float
    label: str
    probs: dict[str, float]
    landmarks: np.ndarray | None = field(default=None, compare=False, repr=False)
    track_id: int | None = None
    smoothed_probs: dict[str, float] | None = None

    @property
    def smoothed_label(self) -> str:
        """The most likely label after smoothing (``label`` when there is no smoothing)."""
        if self.smoothed_probs is None:
            return self.label
        return max(self.smoothed_probs, key=self.smoothed_probs.__getitem__)

    @property
    def confidence(self) -> float:
        """Probability of ``label``."""
        return self.probs[self.label]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: box (list of 4 ints), score, label, probs; for tracked faces also
        track_id, smoothed_label and smoothed_probs."""
        result: dict[str, object] = {
            "box": [int(v) for v in self.box],
            "score": round(float(self.score), 4),
            "label": self.label,
            "probs": {k: round(float(v), 6) for k, v in self.probs.items()},
        }
        if self.track_id is not None:
            result["track_id"] = int(self.track_id)
        if self.smoothed_probs is not None:
            result["smoothed_label"] = self.smoothed_label
            result["smoothed_probs"] = {
                k: round(float(v), 6) for k, v in self.smoothed_probs.items()
            }
        return result


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
