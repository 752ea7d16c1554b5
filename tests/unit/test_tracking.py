"""Face tracks and per-track smoothing, fed boxes directly (no detector, no network).

The figures held here (IDF1 1.0 and no ID switch on the synthetic people clip, with detector
misses) are the ones README.md states."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fer_lightning.inference.people import FaceTracks
from fer_lightning.inference.predictions import FacePrediction
from fer_lightning.inference.samples import people_clip
from fer_lightning.inference.smoothing import ProbabilitySmoother, check_smoothing
from fer_lightning.inference.tracking import IouTracker, iou_matrix
from tests.helpers.tracking import detections, score_tracks

LABELS = ("happy", "sad", "neutral")


@pytest.fixture(scope="module")
def clip():
    return people_clip()


def test_iou_of_boxes():
    overlap = iou_matrix([(0, 0, 10, 10), (0, 0, 0, 0)], [(0, 0, 10, 10), (5, 0, 15, 10)])
    assert overlap == pytest.approx(np.array([[1.0, 1 / 3], [0.0, 0.0]]))
    assert iou_matrix(np.zeros((0, 4)), [(0, 0, 1, 1)]).shape == (0, 1)


@pytest.mark.parametrize(
    ("every_n_frames", "drop"), [(1, 0.0), (1, 0.1), (1, 0.3), (3, 0.1), (5, 0.0)]
)
def test_the_clip_scores_idf1_1_without_id_switches(clip, every_n_frames, drop):
    """The README's figures: persons 1 and 2 cross (1 hidden behind 2 for 18 frames), person 3
    leaves for 15 frames and comes back (same id), then for 40 (a new id), detector misses
    dropped in at random."""
    tracker = IouTracker(max_missed=30, min_iou=0.3)
    found = detections(clip, drop)
    scores = score_tracks(clip, found, tracker.update, every_n_frames)
    assert scores["idf1"] == 1.0
    assert scores["num_switches"] == 0


def test_ids_do_not_swap_where_two_faces_cross(clip):
    """Person 1 walks right, person 2 left, 2 in front: each keeps its id after the crossing
    (a tracker on overlap alone, without the motion, swaps them here)."""
    tracker = IouTracker(max_missed=30, min_iou=0.3)
    first: dict[int, int] = {}
    for index in range(0, len(clip.truth), 5):  # every_n_frames=5
        people = [p for p in (1, 2) if p in clip.truth[index]]
        ids = tracker.update([clip.truth[index][p] for p in people])
        for person, track_id in zip(people, ids, strict=True):
            assert first.setdefault(person, track_id) == track_id, f"frame {index}"
    assert first[1] != first[2]


def test_two_boxes_crossing_with_misses_keep_their_ids():
    tracker = IouTracker(max_missed=10, min_iou=0.2)
    ids_seen = []
    for step in range(21):
        left = (10 + 20 * step, 0, 110 + 20 * step, 100)
        right = (410 - 20 * step, 10, 510 - 20 * step, 110)
        boxes = [left, right] if step not in (9, 10, 11) else [right]  # left hidden behind
        ids = tracker.update(boxes)
        names = ("left", "right") if len(ids) == 2 else ("right",)
        ids_seen.append(dict(zip(names, ids, strict=True)))
    assert {frame["right"] for frame in ids_seen} == {2}
    assert {frame["left"] for frame in ids_seen if "left" in frame} == {1}


def test_a_face_seen_in_part_as_it_goes_behind_another_keeps_its_id():
    """As a real detector does: the hidden face's box narrows to its visible part before it is
    lost and comes back narrow; those boxes must not stop the track's motion (or it loses the
    face after the crossing)."""
    tracker = IouTracker(max_missed=30, min_iou=0.3)
    ids, hidden = [], 0
    for step in range(140):
        x, front = 10 + 2 * step, 400 - 2 * step  # walks right; walks left, in front
        visible = (x, min(x + 50, front)) if x < front else (max(x, front + 50), x + 50)
        boxes = [(front, 182, front + 50, 242)]
        if visible[1] - visible[0] >= 35:  # a detector finds it while 70% of it shows
            boxes.append((visible[0], 160, visible[1], 222))
        else:
            hidden += 1
        ids.append(tracker.update(boxes))
    assert hidden >= 14
    assert {frame[0] for frame in ids} == {1}
    assert {frame[1] for frame in ids if len(frame) == 2} == {2}


@pytest.mark.parametrize("max_missed", [0, 3, 30])
def test_a_face_back_within_the_limit_keeps_its_id_and_after_it_gets_a_new_one(max_missed):
    box = (100, 100, 200, 200)
    within = IouTracker(max_missed=max_missed)
    first = within.update([box])
    for _ in range(max_missed):
        assert within.update([]) == []
    assert within.update([box]) == first

    beyond = IouTracker(max_missed=max_missed)
    first = beyond.update([box])
    for _ in range(max_missed + 1):
        beyond.update([])
    assert beyond.update([box]) != first
    assert beyond.live_ids == [2]


def test_new_people_get_new_ids_in_order_of_appearance():
    tracker = IouTracker()
    assert tracker.update([(0, 0, 10, 10)]) == [1]
    assert tracker.update([(100, 0, 110, 10), (0, 0, 10, 10)]) == [2, 1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_missed": -1}, "max_missed=-1"),
        ({"max_missed": 1.5}, "max_missed=1.5"),
        ({"min_iou": 0}, "min_iou=0"),
        ({"min_iou": 1.5}, "min_iou=1.5"),
    ],
)
def test_bad_tracker_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        IouTracker(**options)


def test_exponential_and_window_smoothing():
    exponential = ProbabilitySmoother(0.5)
    assert exponential.update(1, [1, 0]) == pytest.approx([1, 0])
    assert exponential.update(1, [0, 1]) == pytest.approx([0.5, 0.5])
    assert exponential.update(1, [0, 1]) == pytest.approx([0.25, 0.75])
    window = ProbabilitySmoother(2)
    assert window.update(1, [1, 0]) == pytest.approx([1, 0])
    assert window.update(1, [0, 1]) == pytest.approx([0.5, 0.5])
    assert window.update(1, [0, 1]) == pytest.approx([0, 1])
    off = ProbabilitySmoother(0)
    off.update(1, [1, 0])
    assert off.update(1, [0, 1]) == pytest.approx([0, 1])
    assert len(off) == 0


@pytest.mark.parametrize("value", [-0.1, 1.5, 2.5, True, "3", float("nan")])
def test_bad_smoothing_values_are_refused_by_name(value):
    with pytest.raises(ValueError, match=f"smoothing={value!r}"):
        check_smoothing(value)


def face(box, **probs) -> FacePrediction:
    full = {name: float(probs.get(name, 0.0)) for name in LABELS}
    return FacePrediction(box, 0.9, max(full, key=full.__getitem__), full)


@pytest.mark.parametrize("smoothing", [0.8, 5])
def test_smoothing_never_leaks_between_people(smoothing):
    """A happy and a sad person side by side, listed in either order, then crossing: each
    one's smoothed probabilities are its own, exactly."""
    people = FaceTracks(max_missed=5, min_iou=0.2, smoothing=smoothing)
    person_of: dict[int, str] = {}
    for step in range(20):
        happy = face((10 + 10 * step, 0, 110 + 10 * step, 100), happy=1)
        sad = face((300 - 10 * step, 5, 400 - 10 * step, 105), sad=1)
        faces = people.update([happy, sad] if step % 2 else [sad, happy])
        for tracked in faces:
            assert tracked.smoothed_probs == pytest.approx(tracked.probs)
            assert tracked.smoothed_label == tracked.label
        for tracked in faces:
            assert person_of.setdefault(tracked.track_id, tracked.label) == tracked.label
    assert sorted(person_of.values()) == ["happy", "sad"]


def test_a_new_track_starts_its_own_smoothing():
    """A person who comes back after the limit is a new track, smoothed from scratch: nothing
    of the ended track's state is left (and the smoother holds live tracks only)."""
    people = FaceTracks(max_missed=1, min_iou=0.3, smoothing=0.9)
    box = (0, 0, 100, 100)
    for _ in range(5):
        people.update([face(box, happy=1)])
    people.update([])
    people.update([])
    (back,) = people.update([face(box, sad=1)])
    assert back.track_id == 2
    assert back.smoothed_probs == pytest.approx(back.probs)
    assert len(people.smoother) == 1


def test_smoothing_steadies_a_flickering_label():
    """A face that is sad in one frame of three (0.55 against 0.45 happy): raw its label changes
    twice every three frames, smoothed never."""
    people = FaceTracks(smoothing=0.7)
    raw, smoothed = [], []
    for step in range(30):
        probs = {"happy": 0.45, "sad": 0.55} if step % 3 == 2 else {"happy": 0.7, "sad": 0.3}
        (tracked,) = people.update([face((0, 0, 50, 50), **probs)])
        raw.append(tracked.label)
        smoothed.append(tracked.smoothed_label)
    assert sum(a != b for a, b in itertools.pairwise(raw)) == 19
    assert set(smoothed) == {"happy"}
