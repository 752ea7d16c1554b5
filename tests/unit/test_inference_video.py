"""The video path on its own: frames in order, every n-th analysed, the annotated video, the
frame limit and a file that ends early. A stand-in recogniser (the FaceRecognizer protocol)
labels every face "calm", so that no network runs."""

from __future__ import annotations

import cv2
import pytest

from fer_lightning.faces.detectors import WholeImageDetector
from fer_lightning.inference.predictions import FacePrediction
from fer_lightning.inference.video import TruncatedVideoError, predict_video, video_table
from tests.helpers.inference import write_video


class FrameCounter:
    """Labels every face "calm"; records the batches of frame names it is given."""

    labels = ("calm",)

    def __init__(self) -> None:
        self.detector = WholeImageDetector()
        self.batches: list[list[str]] = []
        self.seen = 0

    def recognize(self, bgr_images, detections, save_faces=None, names=None):
        self.batches.append(list(names))
        results = []
        for found in detections:
            results.append([FacePrediction(d.box, d.score, "calm", {"calm": 1.0}) for d in found])
            self.seen += 1
        return results


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi", frames=12, fps=10.0)


def test_every_nth_frame_is_analysed_in_batches_with_its_time(video):
    recognizer = FrameCounter()
    results = list(predict_video(recognizer, video, every_n_frames=3, frame_batch=2))
    assert [r.index for r in results] == [0, 3, 6, 9]
    assert [r.time_s for r in results] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert recognizer.batches == [["frame000000", "frame000003"], ["frame000006", "frame000009"]]


def test_the_annotated_video_has_every_frame_and_max_frames_stops(video, tmp_path):
    output = tmp_path / "out" / "annotated.avi"
    results = list(predict_video(FrameCounter(), video, output, max_frames=7, fourcc="MJPG"))
    assert [r.index for r in results] == list(range(7))
    capture = cv2.VideoCapture(str(output))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    capture.release()
    assert sorted(p.name for p in output.parent.iterdir()) == ["annotated.avi"]


def test_the_table_has_one_row_per_face_with_frame_and_time(video):
    table = video_table(FrameCounter(), video, every_n_frames=4)
    assert table["frame"].tolist() == [0, 4, 8]
    assert table["label"].tolist() == ["calm"] * 3


def test_a_file_that_ends_early_raises_after_its_frames(video, tmp_path):
    cut = tmp_path / "cut.avi"
    data = video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    capture = cv2.VideoCapture(str(cut))
    if int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) != 12:
        pytest.skip("this OpenCV build does not read the header's frame count of a cut file")
    capture.release()
    recognizer = FrameCounter()
    with pytest.raises(TruncatedVideoError) as error:
        for _ in predict_video(recognizer, cut):
            pass
    assert 0 < error.value.frames_read < 12 == error.value.frames_expected
    assert recognizer.seen == error.value.frames_read


def test_every_n_frames_below_one_is_refused(video):
    with pytest.raises(ValueError, match="every_n_frames"):
        next(predict_video(FrameCounter(), video, every_n_frames=0))
