"""People in a video, through the video path with stand-ins (no network, no real detector): the
synthetic people clip written as a video file, a detector that reports the clip's true boxes
(with misses dropped in), and a recogniser that knows each person's emotion. Checks the
predictions table's track columns, tracks.csv's table and the per-person figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fer_lightning.faces.detectors import Detection, FaceDetector
from fer_lightning.inference.drawing import draw_faces
from fer_lightning.inference.people import TrackingOptions
from fer_lightning.inference.predictions import FacePrediction
from fer_lightning.inference.samples import people_clip
from fer_lightning.inference.tables import columns, read_table, tracks_table
from fer_lightning.inference.timeline import emotion_timeline_figure
from fer_lightning.inference.tracking import iou_matrix
from fer_lightning.inference.video import predict_frames, video_table

LABELS = ("happy", "sad", "neutral")
# Person 1 is happy but looks sad (0.55) in one analysed frame of three; 2 is sad; 3 neutral.
EMOTION = {1: "happy", 2: "sad", 3: "neutral"}


class TruthDetector(FaceDetector):
    """Reports the clip's visible faces of each analysed frame (called in frame order), less
    the (frame, person) pairs in ``misses``."""

    name = "truth"

    def __init__(self, clip, every_n_frames: int = 1, misses=frozenset()) -> None:
        self.clip, self.step, self.misses = clip, every_n_frames, misses
        self.calls = 0

    def _detect_bgr(self, image):
        index = self.calls * self.step
        self.calls += 1
        shown = self.clip.truth[index]
        return [Detection(box, 0.9) for p, box in shown.items() if (index, p) not in self.misses]


class PersonRecognizer:
    """Labels each face with its person's emotion (found by the box, from the frame's name)."""

    labels = LABELS

    def __init__(self, clip, detector) -> None:
        self.clip, self.detector = clip, detector
        self.analysed = 0

    def recognize(self, bgr_images, detections, save_faces=None, names=None):
        results = []
        for name, found in zip(names or [None] * len(detections), detections, strict=True):
            index = int(name.removeprefix("frame")) if name else self.analysed
            self.analysed += 1
            shown = self.clip.truth[index]
            people = list(shown)
            faces = []
            for detection in found:
                overlap = iou_matrix([detection.box], [shown[p] for p in people])[0]
                person = people[int(np.argmax(overlap))]
                probs = dict.fromkeys(LABELS, 0.1)
                probs[EMOTION[person]] = 0.8
                if person == 1 and index % 3 == 2:
                    probs = {"happy": 0.4, "sad": 0.55, "neutral": 0.05}
                label = max(probs, key=probs.__getitem__)
                faces.append(FacePrediction(detection.box, 0.9, label, probs))
            results.append(faces)
        return results


@pytest.fixture(scope="module")
def clip():
    return people_clip()


@pytest.fixture(scope="module")
def clip_video(clip, tmp_path_factory):
    return clip.write(tmp_path_factory.mktemp("people") / "people.avi")


def person_of(clip, row) -> int:
    shown = clip.truth[int(row.frame)]
    people = list(shown)
    box = (row.x0, row.y0, row.x1, row.y1)
    return people[int(np.argmax(iou_matrix([box], [shown[p] for p in people])[0]))]


@pytest.fixture(scope="module")
def table(clip, clip_video):
    rng = np.random.default_rng(1)
    misses = {(t, p) for t, shown in enumerate(clip.truth) for p in shown if rng.random() < 0.1}
    recognizer = PersonRecognizer(clip, TruthDetector(clip, 2, misses))
    tracking = TrackingOptions(max_missed=10, min_iou=0.3, smoothing=0.7)
    return video_table(recognizer, clip_video, every_n_frames=2, tracking=tracking)


def test_each_person_keeps_one_track_id_and_a_return_after_the_limit_is_new(clip, table):
    """Person 3 is away 15 frames (7 analysed: within max_missed=10), then 40 (20: beyond)."""
    table = table.assign(person=[person_of(clip, row) for row in table.itertuples()])
    ids = table.groupby("person")["track_id"].unique().to_dict()
    assert [len(ids[p]) for p in (1, 2)] == [1, 1]
    three = table[table["person"] == 3]
    before, after = three[three["frame"] < 120], three[three["frame"] >= 120]
    assert before["track_id"].nunique() == 1 and after["track_id"].nunique() == 1
    assert set(before["track_id"]) != set(after["track_id"])
    assert sorted(table["track_id"].unique()) == [1, 2, 3, 4]


def test_the_table_keeps_raw_and_smoothed_columns(clip, table):
    assert list(table.columns) == columns(LABELS)
    one = table[table["track_id"] == 1]
    assert set(one["label"]) == {"happy", "sad"}  # raw: flickers
    assert set(one["smoothed_label"]) == {"happy"}  # smoothed: steady
    assert one["smoothed_sad"].max() < one["sad"].max()
    # Smoothing never mixes people: the sad and the neutral person stay exactly themselves.
    others = table[table["track_id"] != 1]
    assert (others["smoothed_label"] == others["label"]).all()
    for name in LABELS:
        assert others[f"smoothed_{name}"].to_numpy() == pytest.approx(others[name].to_numpy())


def test_tracks_table_has_one_row_per_person(table, tmp_path):
    people = tracks_table(table, LABELS)
    assert people["track_id"].tolist() == [1, 2, 3, 4]
    assert people["dominant"].tolist() == ["happy", "sad", "neutral", "neutral"]
    assert people["share_happy"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert people.loc[3, "first_frame"] >= 120 and people.loc[3, "last_frame"] == 148
    assert people.loc[2, "last_frame"] < 80
    row = people.loc[0]
    assert row["duration_s"] == pytest.approx(row["last_s"] - row["first_s"])
    assert row["first_s"] == pytest.approx(row["first_frame"] / 25.0)
    # predictions.csv read back gives the same people.
    path = tmp_path / "predictions.csv"
    table.to_csv(path, index=False)
    pd.testing.assert_frame_equal(tracks_table(read_table(path, LABELS), LABELS), people)


def test_the_figure_has_one_row_per_person(table):
    figure = emotion_timeline_figure(table, LABELS, "people.avi")
    titles = [ax.get_title(loc="left") for ax in figure.axes]
    assert titles[:4] == [
        "person #1: happy 100%",
        "person #2: sad 100%",
        "person #3: neutral 100%",
        "person #4: neutral 100%",
    ]
    assert len(figure.axes) == 5  # four people and the shares


def test_untracked_videos_leave_the_track_columns_empty(clip, clip_video):
    recognizer = PersonRecognizer(clip, TruthDetector(clip, 5))
    table = video_table(recognizer, clip_video, every_n_frames=5, tracking=None)
    assert table["track_id"].isna().all() and table["smoothed_label"].isna().all()
    assert len(emotion_timeline_figure(table, LABELS, "x").axes) == 2


def test_a_live_stream_of_frames_is_tracked_the_same(clip):
    recognizer = PersonRecognizer(clip, TruthDetector(clip))
    results = list(predict_frames(recognizer, iter(clip.frames[:60])))
    assert [r.index for r in results] == list(range(60))
    ids = {f.track_id for r in results for f in r.faces}
    assert ids == {1, 2, 3}


def test_a_tracked_face_is_drawn_with_its_id_and_smoothed_label():
    image = np.zeros((200, 300, 3), np.uint8)
    raw = {"happy": 0.4, "sad": 0.6}
    tracked = FacePrediction(
        (50, 80, 150, 180), 0.9, "sad", raw, None, 7, {"happy": 0.9, "sad": 0.1}
    )
    untracked = FacePrediction((50, 80, 150, 180), 0.9, "happy", {"happy": 0.9, "sad": 0.1})
    # Same smoothed bars as the untracked face's probabilities; the caption adds "#7 ".
    drawn, plain = draw_faces(image, [tracked]), draw_faces(image, [untracked])
    assert not np.array_equal(drawn, plain)
    assert np.array_equal(drawn[80:], plain[80:])  # below the caption: box and bars alike
