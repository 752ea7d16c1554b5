"""Face tracks: the same ``track_id`` for a person's box from one analysed frame to the next.

:class:`IouTracker` matches the boxes of each analysed frame to the live tracks by box overlap
(intersection over union), with the one-to-one assignment that maximises the total overlap
(``scipy.optimize.linear_sum_assignment``, the Hungarian method, as SORT does). A track's box is
carried forward along its recent motion (a line fitted to its last whole sightings; boxes of a
partly hidden face do not count), so two faces that cross keep their ids even when one hides
the other for a while; it also matches where it
was last seen (a face that stopped, or came back where it left). A track missing from more than
``max_missed`` analysed frames in a row ends, and a face seen after that gets a new id. Frames
skipped by ``every_n_frames`` are not analysed and so never count as misses.

It looks at boxes only (no appearance): a person who leaves the picture for longer than the
limit comes back as a new track.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

# A track's motion is the least-squares slope of its box centre over its last this many
# sightings (robust to the detector's jitter, where a step-to-step difference is not).
MOTION_HISTORY = 10
# A box narrower or shorter than this share of the track's recent ones shows part of the face
# (partly hidden): it is matched, but does not move the track's motion.
PARTIAL_SIZE = 0.9


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
    # (analysed frame number, (4,) box) of the last whole sightings: the motion's evidence.
    seen: deque[tuple[int, np.ndarray]] = field(
        default_factory=lambda: deque(maxlen=MOTION_HISTORY)
    )
    missed: int = 0  # analysed frames in a row without it

    def motion(self) -> np.ndarray:
        """The box centre's motion per analysed frame, (2,): a line fitted to the last whole
        sightings."""
        if len(self.seen) < 2:
            return np.zeros(2)
        times = np.array([t for t, _ in self.seen], dtype=float)
        centres = np.stack([_centre(box) for _, box in self.seen])
        times -= times.mean()
        return (times @ (centres - centres.mean(axis=0))) / (times @ times)

    def expected(self, frame: int) -> np.ndarray:
        """Where the whole box should be in analysed frame ``frame``, following its motion from
        the last whole sighting: (4,)."""
        last_frame, last_box = self.seen[-1]
        return last_box + np.tile(self.motion() * (frame - last_frame), 2)

    def is_whole(self, box: np.ndarray) -> bool:
        """Whether ``box`` (4,) shows the whole face: not much narrower or shorter than the
        track's recent boxes (a face going behind another, or out of the picture, is
        detected smaller and its centre stops; that must not count as motion)."""
        sizes = np.stack([b[2:] - b[:2] for _, b in self.seen])
        return bool(np.all(box[2:] - box[:2] >= PARTIAL_SIZE * np.median(sizes, axis=0)))


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
        self._frame = -1  # analysed frames so far, less one

    @property
    def live_ids(self) -> list[int]:
        """The ids of the tracks that may still take a face."""
        return [track.track_id for track in self._tracks]

    def update(self, boxes: ArrayLike) -> list[int]:
        """The track id of each of ``boxes`` (N, 4) ``x0, y0, x1, y1`` of the next analysed
        frame, in their order; N may be 0. Tracks missed too long are ended first."""
        boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
        self._frame += 1
        ids: list[int | None] = [None] * len(boxes)
        if self._tracks and len(boxes):
            # A face matches where its track is expected (moving on), or where it was last seen
            # (a face that stopped, or came back where it left).
            expected = np.stack([track.expected(self._frame) for track in self._tracks])
            last = np.stack([track.box for track in self._tracks])
            overlap = np.maximum(iou_matrix(expected, boxes), iou_matrix(last, boxes))
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
                track = _Track(self._next_id, box.copy())
                track.seen.append((self._frame, box.copy()))
                self._tracks.append(track)
                ids[index] = self._next_id
                self._next_id += 1
        return [int(i) for i in ids if i is not None]

    def _follow(self, track: _Track, box: np.ndarray) -> None:
        if track.is_whole(box):
            track.seen.append((self._frame, box.copy()))
        track.box = box.copy()
        track.missed = 0


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
