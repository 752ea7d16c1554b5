"""Scoring face tracks with motmetrics (IDF1, ID switches) on the synthetic people clip."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fer_lightning.inference.samples import PeopleClip
from fer_lightning.inference.tracking import iou_matrix

# Truth and hypothesis boxes match where they overlap at least this much (motmetrics' usual).
MATCH_IOU = 0.5


def detections(
    clip: PeopleClip, drop: float, seed: int = 0, jitter: float = 2.0
) -> list[list[tuple[int, tuple[float, ...]]]]:
    """Per frame, ``(person, box)`` of the faces a detector reports: each visible face, with
    Gaussian ``jitter`` (pixels) on its box, missed with probability ``drop`` (seeded)."""
    rng = np.random.default_rng(seed)
    frames = []
    for shown in clip.truth:
        found = []
        for person, box in shown.items():
            noisy = tuple(float(v) for v in np.asarray(box) + rng.normal(0, jitter, 4))
            if rng.random() >= drop:
                found.append((person, noisy))
        frames.append(found)
    return frames


def score_tracks(
    clip: PeopleClip,
    found: Sequence[Sequence[tuple[int, tuple[float, ...]]]],
    track: Callable[[list[tuple[float, ...]]], list[int]],
    every_n_frames: int = 1,
) -> dict[str, float]:
    """Run ``track`` (boxes of one analysed frame -> their track ids) over every
    ``every_n_frames``-th frame of ``found`` and score its ids with motmetrics against the ids
    the clip expects (:attr:`PeopleClip.person_ids`), over the faces that were detected (a
    tracker cannot name a face it was not given): ``idf1``, ``num_switches``, ``mota``."""
    import motmetrics

    accumulator = motmetrics.MOTAccumulator(auto_id=True)
    for index in range(0, len(found), every_n_frames):
        frame = found[index]
        boxes = [box for _, box in frame]
        ids = track(boxes)
        truth = np.array([clip.truth[index][person] for person, _ in frame]).reshape(-1, 4)
        # motmetrics' own iou_matrix uses np.asfarray, gone in NumPy 2: same distance here.
        distance = 1 - iou_matrix(truth, np.array(boxes).reshape(-1, 4))
        distance[distance > 1 - MATCH_IOU] = np.nan
        expected = [clip.person_ids[index][person] for person, _ in frame]
        accumulator.update(expected, ids, distance)
    metrics = motmetrics.metrics.create()
    summary = metrics.compute(accumulator, metrics=["idf1", "num_switches", "mota"], name="clip")
    return {key: float(summary[key].iloc[0]) for key in ("idf1", "num_switches", "mota")}
