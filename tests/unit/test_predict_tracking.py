"""fer-predict's tracking options, in process: bad values are refused by name (exit 2, nothing
written); a video gets track_id and smoothed columns in both prediction files and tracks.csv."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fer_lightning.cli import predict
from fer_lightning.inference.tables import columns, share_columns
from fer_lightning.labels import EMOTIONS
from tests.helpers.hydra import run_app
from tests.helpers.inference import SMALL_INPUT, save_published_checkpoint, write_video


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return save_published_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.pt")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi", frames=12, fps=10.0)


def common(published, video):
    return [
        f"ckpt_path={published}",
        "detector=none",
        f"input_size={SMALL_INPUT}",
        f"source={video}",
    ]


@pytest.mark.parametrize(
    "option",
    [
        "smoothing=1.5",
        "smoothing=-1",
        "smoothing=abc",
        "track_max_missed=-1",
        "track_max_missed=2.5",
        "track_min_iou=0",
        "track_min_iou=1.2",
        "track=maybe",
    ],
)
def test_bad_tracking_options_are_refused_by_name(published, video, tmp_path, capsys, option):
    out = tmp_path / "out"
    status = run_app(predict.main, [*common(published, video), f"output_dir={out}", option])
    err = capsys.readouterr().err
    assert status == 2, err
    assert option.split("=")[0] in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_video_gets_track_columns_and_tracks_csv(published, video, tmp_path, capsys):
    out = tmp_path / "out"
    status = run_app(predict.main, [*common(published, video), f"output_dir={out}", "smoothing=3"])
    err = capsys.readouterr().err
    assert status == 0, err
    assert "1 person (tracks)" in err
    table = pd.read_csv(out / "predictions.csv")
    assert list(table.columns) == columns(EMOTIONS)
    assert table["track_id"].tolist() == [1] * 12
    # A three-frame moving average of the raw probabilities.
    raw = table[list(EMOTIONS)].to_numpy()
    smoothed = table[[f"smoothed_{e}" for e in EMOTIONS]].to_numpy()
    assert smoothed[5] == pytest.approx(raw[3:6].mean(axis=0), abs=2e-6)
    lines = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert lines[0]["track_id"] == 1 and set(lines[0]["smoothed_probs"]) == set(EMOTIONS)
    assert set(lines[0]["probs"]) == set(EMOTIONS)
    people = pd.read_csv(out / "tracks.csv")
    assert list(people.columns[:9]) == [
        "source",
        "track_id",
        "first_frame",
        "last_frame",
        "first_s",
        "last_s",
        "duration_s",
        "frames",
        "dominant",
    ]
    assert list(people.columns[9:]) == share_columns(EMOTIONS)
    assert people[["track_id", "first_frame", "last_frame", "frames"]].values.tolist() == [
        [1, 0, 11, 12]
    ]
    assert people.loc[0, "duration_s"] == pytest.approx(1.1)
    assert people[share_columns(EMOTIONS)].sum(axis=1).tolist() == pytest.approx([1.0])


def test_track_false_leaves_the_columns_empty_and_writes_no_tracks_csv(
    published, video, tmp_path, capsys
):
    out = tmp_path / "out"
    status = run_app(predict.main, [*common(published, video), f"output_dir={out}", "track=false"])
    assert status == 0, capsys.readouterr().err
    table = pd.read_csv(out / "predictions.csv")
    assert table["track_id"].isna().all()
    assert not (out / "tracks.csv").exists()
    assert "track_id" not in json.loads((out / "predictions.jsonl").open().readline())
