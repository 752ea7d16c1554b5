"""People over time: the faces of each analysed frame get a ``track_id`` (:mod:`.tracking`) and
their track's smoothed probabilities (:mod:`.smoothing`).

>>> people = FaceTracks(max_missed=30, min_iou=0.3, smoothing=0.7)
>>> for frame in frames:                      # any iterator of BGR images: a live stream
...     faces = people.update(recognizer.predict(frame))
...     print([(f.track_id, f.smoothed_label) for f in faces])

One :class:`FaceTracks` follows one video or stream; its state is bounded by the people in view
(ended tracks are dropped with their smoothing state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from fer_lightning.inference.predictions import FacePrediction
from fer_lightning.inference.smoothing import ProbabilitySmoother
from fer_lightning.inference.tracking import IouTracker


@dataclass(frozen=True)
class TrackingOptions:
    """How faces are followed: ``max_missed`` analysed frames a track may miss, ``min_iou``
    box overlap to match, ``smoothing`` (see :mod:`.smoothing`)."""

    max_missed: int = 30
    min_iou: float = 0.3
    smoothing: float = 0.7

    def tracker(self) -> FaceTracks:
        """A new, empty :class:`FaceTracks` with these options (checked: ValueError)."""
        return FaceTracks(self.max_missed, self.min_iou, self.smoothing)


class FaceTracks:
    """Tracks and smooths the faces of consecutive analysed frames of one video or stream."""

    def __init__(self, max_missed: int = 30, min_iou: float = 0.3, smoothing: float = 0.7) -> None:
        self.tracker = IouTracker(max_missed, min_iou)
        self.smoother = ProbabilitySmoother(smoothing)

    def update(self, faces: Sequence[FacePrediction]) -> list[FacePrediction]:
        """``faces`` of the next analysed frame (in any order), as copies with ``track_id``
        and ``smoothed_probs`` set; same order."""
        ids = self.tracker.update([face.box for face in faces])
        self.smoother.forget(self.tracker.live_ids)
        tracked = []
        for face, track_id in zip(faces, ids, strict=True):
            labels = list(face.probs)
            smoothed = self.smoother.update(track_id, [face.probs[k] for k in labels])
            probs = {k: float(v) for k, v in zip(labels, smoothed, strict=True)}
            tracked.append(replace(face, track_id=track_id, smoothed_probs=probs))
        return tracked
