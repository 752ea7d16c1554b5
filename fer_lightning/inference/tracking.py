"""Face tracks: the same ``track_id`` for a person's box from one analysed frame to the next.

:class:`IouTracker` matches the boxes of each analysed frame to the live tracks by box overlap
(intersection over union), with the one-to-one assignment that maximises the total overlap
(``scipy.optimize.linear_sum_assignment``, the Hungarian method, as SORT does). A track's box is
carried forward with its recent motion, so two faces that cross keep their ids; a track missing
from more than ``max_missed`` analysed frames in a row ends, and a face seen after that gets a
new id. Frames skipped by ``every_n_frames`` are not analysed and so never count as misses.

It looks at boxes only (no appearance): a person who leaves the picture for longer than the
limit comes back as a new track.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

# A missing track's box is carried along its motion for at most this many analysed frames, then
# waits where it was (a face that stopped, or left and comes back, is looked for near its last
# place rather than far along a line).
MAX_EXTRAPOLATED_FRAMES = 5
# Weight of the newest step in a track's motion (an exponential average of its steps).
MOTION_WEIGHT = 0.5


def iou_matrix(first: ArrayLike, second: ArrayLike) -> np.ndarray:
    """Intersection over union of every box of ``first`` (N, 4) with every box of ``second``
    (M, 4), boxes as ``x0, y0, x1, y1``: an (N, M) float array in [0, 1]."""
    a = np.asarray(first, dtype=float).reshape(-1, 4)
    b = np.asarray(second, dtype=float).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 2], b[None, :, 2])
    bottom = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # (4,) the last box seen
    motion: np.ndarray = field(default_factory=lambda: np.zeros(4))  # (4,) per analysed frame
    missed: int = 0  # analysed frames in a row without it

    def predicted(self) -> np.ndarray:
        """Where the box should be now: (4,)."""
        steps = min(self.missed + 1, MAX_EXTRAPOLATED_FRAMES)
        return self.box + steps * self.motion


class IouTracker:
    """Gives each box of each analysed frame a track id (1, 2, 3... in order of appearance).

    ``max_missed``: analysed frames in a row a track may miss (detector misses, a face out of
    the picture) and still take its face back; after that the face gets a new id. ``min_iou``:
    the overlap in (0, 1] between a track's expected box and a detection needed to match.
    """

    def __init__(self, max_missed: int = 30, min_iou: float = 0.3) -> None:
        if isinstance(max_missed, bool) or int(max_missed) != max_missed or max_missed < 0:
            raise ValueError(f"max_missed={max_missed!r}: must be a whole number >= 0.")
        if not 0 < min_iou <= 1:
            raise ValueError(f"min_iou={min_iou!r}: must be in (0, 1].")
        self.max_missed = int(max_missed)
        self.min_iou = float(min_iou)
        self._tracks: list[_Track] = []
        self._next_id = 1

    @property
    def live_ids(self) -> list[int]:
        """The ids of the tracks that may still take a face."""
        return [track.track_id for track in self._tracks]

    def update(self, boxes: ArrayLike) -> list[int]:
        """The track id of each of ``boxes`` (N, 4) ``x0, y0, x1, y1`` of the next analysed
        frame, in their order; N may be 0. Tracks missed too long are ended first."""
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
        ids: list[int | None] = [None] * len(boxes)
        if self._tracks and len(boxes):
            expected = np.stack([track.predicted() for track in self._tracks])
            overlap = iou_matrix(expected, boxes)
            rows, cols = linear_sum_assignment(overlap, maximize=True)
            for row, col in zip(rows, cols, strict=True):
                if overlap[row, col] >= self.min_iou:
                    self._follow(self._tracks[row], boxes[col])
                    ids[col] = self._tracks[row].track_id
        matched = {i for i in ids if i is not None}
        for track in self._tracks:
            if track.track_id not in matched:
                track.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]
        for index, box in enumerate(boxes):
            if ids[index] is None:
                self._tracks.append(_Track(self._next_id, box.copy()))
                ids[index] = self._next_id
                self._next_id += 1
        return [int(i) for i in ids if i is not None]

    @staticmethod
    def _follow(track: _Track, box: np.ndarray) -> None:
        step = (box - track.box) / (track.missed + 1)
        track.motion = (1 - MOTION_WEIGHT) * track.motion + MOTION_WEIGHT * step
        track.box = box.copy()
        track.missed = 0
