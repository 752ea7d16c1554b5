"""What fer-predict hands over: predictions.csv beside predictions.jsonl, the DataFrame API with
the same rows, video time stamps, every_n_frames, the emotions-over-time plot, one output name
per input, truncated videos and a full disk.

The recogniser is a small untrained ResNet-18 with ``detector=none`` (each image is one face),
so that every run is short; the runs are still whole pipelines, hence ``slow``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_lightning.cli import predict
from fer_lightning.inference import EmotionRecognizer
from fer_lightning.inference import outputs as outputs_module
from fer_lightning.inference.outputs import OutputNames, plan_output_names
from fer_lightning.inference.samples import astronaut, mosaic
from fer_lightning.inference.tables import columns, read_table
from fer_lightning.inference.video import TruncatedVideoError
from fer_lightning.labels import EMOTIONS
from tests.helpers.hydra import run_app
from tests.helpers.inference import SMALL_INPUT, save_lightning_checkpoint, write_video

# Numbers compare exactly between the command and the API only at one precision.
COMMON = ["detector=none", "device=cpu", "precision=fp32"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_lightning_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.ckpt")


@pytest.fixture(scope="module")
def recognizer(checkpoint) -> EmotionRecognizer:
    return EmotionRecognizer.from_checkpoint(
        checkpoint, device="cpu", detector="none", precision="fp32", input_size=SMALL_INPUT
    )


def predict_run(checkpoint: Path, source: Path, out: Path, *extra: str) -> int:
    return run_app(
        predict.main,
        [f"ckpt_path={checkpoint}", f"source={source}", f"output_dir={out}", *COMMON, *extra],
    )


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def digest(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_photos(root: Path) -> list[str]:
    face = astronaut()
    (root / "nested").mkdir(parents=True)
    cv2.imwrite(str(root / "face.jpg"), face)
    cv2.imwrite(str(root / "nested" / "four.png"), mosaic(face))
    cv2.imwrite(str(root / "gray.png"), cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))
    return ["face.jpg", "gray.png", "nested/four.png"]


def assert_same_rows(table: pd.DataFrame, expected: pd.DataFrame, ignore: tuple[str, ...]) -> None:
    keep = [c for c in table.columns if c not in ignore]
    pd.testing.assert_frame_equal(
        table[keep].reset_index(drop=True), expected[keep].reset_index(drop=True)
    )


# -- images ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_images_give_a_csv_the_jsonl_and_the_dataframe_api_agree_with(
    checkpoint, recognizer, tmp_path, capsys
):
    names = write_photos(tmp_path / "in")
    out = tmp_path / "out"
    assert predict_run(checkpoint, tmp_path / "in", out) == 0, capsys.readouterr().err
    table = read_table(out / "predictions.csv", EMOTIONS)
    assert list(table.columns) == columns(EMOTIONS)
    assert table["track_id"].isna().all()  # images are not tracked
    assert table["source"].tolist() == names  # one face per image (detector=none), sorted
    assert table["output"].tolist() == names  # annotated copies keep the relative path
    assert all((out / name).is_file() for name in names)
    assert table["frame"].isna().all() and table["time_s"].isna().all()
    probabilities = table[list(EMOTIONS)].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert (table["label"] == table[list(EMOTIONS)].idxmax(axis=1)).all()
    # predictions.jsonl holds the same faces.
    lines = jsonl(out / "predictions.jsonl")
    assert [line["source"] for line in lines] == names
    assert [line["output"] for line in lines] == names
    for line, (_, row) in zip(lines, table.iterrows(), strict=True):
        assert line["box"] == [row.x0, row.y0, row.x1, row.y1]
        assert line["probs"] == {name: row[name] for name in EMOTIONS}
    # The DataFrame API: the same rows (no annotated output: it writes none).
    api = recognizer.predict_frame_table([tmp_path / "in" / n for n in names], names=names)
    assert list(api.columns) == list(table.columns)
    assert (api["output"] == "").all()
    assert_same_rows(api, table, ignore=("output",))
    one = recognizer.predict_frame_table(tmp_path / "in" / "face.jpg")
    assert len(one) == 1 and one["source"][0] == str(tmp_path / "in" / "face.jpg")


@pytest.mark.slow
def test_every_face_line_says_whether_its_probabilities_are_calibrated(tmp_path, capsys):
    """A model with a fitted temperature: each face's line in predictions.jsonl carries it
    (``temperature``) and its probabilities are divided by it; ``calibrate=false`` writes the raw
    softmax and ``temperature: null``. The label never changes."""
    import torch

    from fer_lightning.cli.train import save_published_format
    from fer_lightning.models import create_model
    from fer_lightning.models.calibration import Calibration

    torch.manual_seed(0)
    net = create_model("resnet18")
    net.arch, net.calibration = "resnet18", Calibration(temperature=2.5, fitted_on=420)
    model = save_published_format(net, tmp_path, SMALL_INPUT, None, None)
    names = write_photos(tmp_path / "in")
    lines = {}
    for option in ("calibrate=true", "calibrate=false"):
        out = tmp_path / option.replace("=", "_")
        code = predict_run(model, tmp_path / "in", out, option, f"input_size={SMALL_INPUT}")
        assert code == 0, capsys.readouterr().err
        lines[option] = jsonl(out / "predictions.jsonl")
    on, off = lines["calibrate=true"], lines["calibrate=false"]
    assert len(on) == len(off) == len(names)
    assert {line["temperature"] for line in on} == {2.5}
    assert {line["temperature"] for line in off} == {None}
    for calibrated, raw in zip(on, off, strict=True):
        assert calibrated["label"] == raw["label"]
        assert max(calibrated["probs"].values()) < max(raw["probs"].values())


# -- videos ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_video_rows_have_times_every_n_frames_and_an_emotion_plot(
    checkpoint, recognizer, tmp_path, capsys
):
    video = write_video(tmp_path / "clip.avi", frames=12, fps=10.0)
    out = tmp_path / "out"
    status = predict_run(checkpoint, video, out, "every_n_frames=3")
    err = capsys.readouterr().err
    assert status == 0, err
    table = read_table(out / "predictions.csv", EMOTIONS)
    assert table["frame"].tolist() == [0, 3, 6, 9]
    assert table["time_s"].tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert set(table["source"]) == {"clip.avi"} and set(table["output"]) == {"clip.avi.mp4"}
    lines = jsonl(out / "predictions.jsonl")
    assert [(line["frame"], line["time_s"]) for line in lines] == [
        (0, 0.0),
        (3, 0.3),
        (6, 0.6),
        (9, 0.9),
    ]
    # The annotated video keeps every frame; the plot and the summary line are there.
    annotated = cv2.VideoCapture(str(out / "clip.avi.mp4"))
    count = 0
    while annotated.read()[0]:
        count += 1
    assert count == 12
    plot = out / "clip.avi.emotions.png"
    with Image.open(plot) as image:
        assert image.size[0] >= 800 and image.size[1] >= 500
    assert "clip.avi: 4 frames analysed, faces in 4;" in err
    # The DataFrame API gives the same rows.
    api = recognizer.predict_video(video, every_n_frames=3, name="clip.avi")
    assert list(api.columns) == list(table.columns)
    assert_same_rows(api, table, ignore=("output",))
    assert not list(out.glob(".partial-*"))


@pytest.mark.slow
def test_truncated_video_reports_the_frames_read_and_keeps_them(
    checkpoint, recognizer, tmp_path, capsys
):
    whole = write_video(tmp_path / "whole.avi", frames=30)
    data = whole.read_bytes()
    cut = tmp_path / "in" / "cut.avi"
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    status = predict_run(checkpoint, tmp_path / "in", out)
    message = capsys.readouterr().err
    assert status == predict.EXIT_SOME_FAILED, message
    (line,) = [ln for ln in message.splitlines() if ln.startswith("error:")]
    assert "cut.avi: the video ended early:" in line and "of the 30 frames" in line
    read = int(line.split("ended early: ")[1].split()[0])
    assert 0 < read < 30
    table = read_table(out / "predictions.csv", EMOTIONS)
    assert table["frame"].tolist() == list(range(read))  # what was read is kept
    assert (out / "cut.avi.emotions.png").is_file()
    with pytest.raises(TruncatedVideoError) as caught:
        recognizer.predict_video(cut)
    assert (caught.value.frames_read, caught.value.frames_expected) == (read, 30)


# -- names -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_input_gets_its_own_output_name(checkpoint, tmp_path, capsys):
    source = tmp_path / "in"
    (source / "a").mkdir(parents=True)
    face = astronaut()
    cv2.imwrite(str(source / "a" / "x.jpg"), face)
    cv2.imwrite(str(source / "a__x.jpg"), np.roll(face, 40, axis=1))
    cv2.imwrite(str(source / "d.png"), face[::-1].copy())
    Image.fromarray(face[:, :, ::-1]).save(source / "d.gif")
    write_video(source / "clip.avi", frames=4)
    writer = cv2.VideoWriter(
        str(source / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 96)
    )
    for i in range(4):
        writer.write(np.full((96, 96, 3), 40 * i, np.uint8))
    writer.release()
    before = digest(source)
    out, crops = tmp_path / "out", tmp_path / "crops"
    status = predict_run(checkpoint, source, out, f"save_faces={crops}")
    assert status == 0, capsys.readouterr().err
    expected = {
        "a/x.jpg": "a/x.jpg",
        "a__x.jpg": "a__x.jpg",
        "d.png": "d.png",
        "d.gif": "d.gif.png",
        "clip.avi": "clip.avi.mp4",
        "clip.mp4": "clip.mp4",
    }
    outputs = {line["source"]: line["output"] for line in jsonl(out / "predictions.jsonl")}
    assert outputs == expected
    table = read_table(out / "predictions.csv", EMOTIONS)
    assert dict(zip(table["source"], table["output"], strict=True)) == expected
    for name in expected.values():
        assert (out / name).is_file(), name
    # Crops keep the folders too: a/x.jpg and a__x.jpg no longer meet.
    assert (crops / "a" / "x.jpg_face0.png").is_file()
    assert (crops / "a__x.jpg_face0.png").is_file()
    assert (crops / "clip.avi" / "frame000000_face0.png").is_file()
    assert (crops / "clip.mp4" / "frame000000_face0.png").is_file()
    assert (out / "clip.avi.emotions.png").is_file() and (out / "clip.mp4.emotions.png").is_file()
    assert digest(source) == before
    # Deterministic: a second run names everything the same.
    assert predict_run(checkpoint, source, tmp_path / "again") == 0
    again = {
        line["source"]: line["output"] for line in jsonl(tmp_path / "again" / "predictions.jsonl")
    }
    assert again == expected


def test_output_name_plan_resolves_every_kind_of_meeting():
    names = OutputNames(["predictions.jsonl", "predictions.csv"])
    plan = plan_output_names(
        [
            ("d.gif", False),
            ("d.gif.png", False),  # keeps its name; d.gif steps aside
            ("A.JPG", False),
            ("a.jpg", False),  # the same file on a case-insensitive disk
            ("x.gif", False),
            ("x.gif.png/y.jpg", False),  # a folder where x.gif's copy would be a file
            ("v.avi", True),
            ("v.avi.mp4", True),
        ],
        names,
    )
    assert plan["d.gif.png"] == "d.gif.png" and plan["d.gif"] == "d.gif~2.png"
    assert plan["A.JPG"] == "A.JPG" and plan["a.jpg"] == "a~2.jpg"
    assert plan["x.gif.png/y.jpg"] == "x.gif.png/y.jpg" and plan["x.gif"] == "x.gif~2.png"
    assert plan["v.avi.mp4"] == "v.avi.mp4" and plan["v.avi"] == "v.avi~2.mp4"
    assert len({name.casefold() for name in plan.values()}) == len(plan)
    assert names.claim("predictions.csv") == "predictions~2.csv"


@pytest.mark.slow
def test_names_that_are_not_utf8_are_read_and_written(checkpoint, tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    photo = Path(os.fsdecode(bytes(source) + b"/ph\xe9to.jpg"))
    cv2.imwrite(str(tmp_path / "plain.jpg"), astronaut())
    os.rename(tmp_path / "plain.jpg", photo)
    os.rename(
        write_video(tmp_path / "plain.avi", frames=4), os.fsdecode(bytes(source) + b"/caf\xe9.avi")
    )
    out = tmp_path / "out"
    status = predict_run(checkpoint, source, out, f"save_faces={tmp_path / 'crops'}")
    err = capsys.readouterr().err
    assert status == 0 and "Traceback" not in err, err
    written = sorted(os.listdir(os.fsencode(out)))
    assert written == sorted(
        [
            b".fer-predict-run.json",  # marks a finished run (StagedRun)
            b"caf\xe9.avi.emotions.png",
            b"caf\xe9.avi.mp4",
            b"ph\xe9to.jpg",
            b"predictions.csv",
            b"predictions.jsonl",
            b"tracks.csv",  # the video's people
        ]
    )
    assert {line["source"] for line in jsonl(out / "predictions.jsonl")} == {
        "ph\udce9to.jpg",
        "caf\udce9.avi",
    }
    assert "ph\\udce9to.jpg" in (out / "predictions.csv").read_text()
    assert "caf\\udce9.avi" in (out / "tracks.csv").read_text()
    assert os.path.isfile(os.fsencode(tmp_path / "crops") + b"/ph\xe9to.jpg_face0.png")


@pytest.mark.slow
def test_a_single_photo_is_never_replaced_by_its_annotated_copy(checkpoint, tmp_path, capsys):
    photo = tmp_path / "face.jpg"
    cv2.imwrite(str(photo), astronaut())
    before = photo.read_bytes()
    status = predict_run(checkpoint, photo, tmp_path)
    err = capsys.readouterr().err
    assert status == predict.EXIT_USAGE and "would replace the input" in err, err
    assert photo.read_bytes() == before


# -- a full disk -------------------------------------------------------------------------------


class FullDiskFile:
    """A file object whose writes fail as a full disk's do."""

    def __init__(self, path, *args, **kwargs) -> None:
        self._file = open(path, *args, **kwargs)  # noqa: SIM115

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["annotated image", "predictions files"])
def test_full_disk_is_one_message_and_leaves_inputs_and_earlier_outputs(
    checkpoint, tmp_path, capsys, monkeypatch, where
):
    write_photos(tmp_path / "in")
    out = tmp_path / "out"
    assert predict_run(checkpoint, tmp_path / "in", out) == 0
    inputs, earlier = digest(tmp_path / "in"), digest(out)
    capsys.readouterr()
    module = outputs_module if where == "annotated image" else predict
    monkeypatch.setattr(module, "open", FullDiskFile, raising=False)
    status = predict_run(checkpoint, tmp_path / "in", out)
    err = capsys.readouterr().err
    assert status == predict.EXIT_SOME_FAILED
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "cannot write" in line and "the disk is full" in line and str(out) in line
    assert "free some space or choose another output_dir" in line
    assert digest(tmp_path / "in") == inputs
    assert digest(out) == earlier  # no half-written file replaced an earlier one
    assert not list(out.rglob(".partial-*"))
