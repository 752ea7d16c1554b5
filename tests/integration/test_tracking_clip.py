"""The people clip through the whole video path with a real detector: the ids in the
predictions table are scored with motmetrics against the clip's truth, and the figures README.md
states for every analysed frame and every third hold (IDF1 at least 0.99, no ID switch)."""

from __future__ import annotations

import numpy as np
import pytest

from fer_lightning.inference import EmotionRecognizer
from fer_lightning.inference.samples import people_clip
from fer_lightning.inference.tracking import iou_matrix
from fer_lightning.inference.video import video_table
from tests.helpers.inference import installed_detector, save_lightning_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip_and_video(tmp_path_factory):
    clip = people_clip()
    return clip, clip.write(tmp_path_factory.mktemp("people") / "people.avi")


@pytest.mark.parametrize("every_n_frames", [1, 3])
def test_real_detector_tracks_score_idf1_without_switches(clip_and_video, tmp_path, every_n_frames):
    import motmetrics

    clip, video = clip_and_video
    checkpoint = save_lightning_checkpoint(tmp_path / "small.ckpt")
    recognizer = EmotionRecognizer.from_checkpoint(checkpoint, "cpu", installed_detector())
    table = video_table(recognizer, video, every_n_frames=every_n_frames)
    accumulator = motmetrics.MOTAccumulator(auto_id=True)
    for index in range(0, len(clip.frames), every_n_frames):
        rows = table[table["frame"] == index]
        boxes = rows[["x0", "y0", "x1", "y1"]].to_numpy(dtype=float).reshape(-1, 4)
        people = sorted(clip.truth[index])
        truth = np.array([clip.truth[index][p] for p in people], dtype=float).reshape(-1, 4)
        distance = 1 - iou_matrix(truth, boxes)
        distance[distance > 0.5] = np.nan
        expected = [clip.person_ids[index][p] for p in people]
        accumulator.update(expected, rows["track_id"].astype(int).tolist(), distance)
    summary = motmetrics.metrics.create().compute(
        accumulator, metrics=["idf1", "num_switches"], name="clip"
    )
    assert summary["num_switches"].iloc[0] == 0
    assert summary["idf1"].iloc[0] >= 0.99
    assert sorted(table["track_id"].unique()) == [1, 2, 3, 4]  # person 3 returns after the limit
