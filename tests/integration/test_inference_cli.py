"""The predict command line on folders and videos, and ONNX export with its parity check."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from fer_lightning.cli import export, predict
from fer_lightning.inference import EmotionRecognizer
from fer_lightning.inference.onnx_export import PARITY_TOLERANCE
from fer_lightning.inference.samples import ASTRONAUT_PATH, astronaut, mosaic
from tests.helpers.hydra import run_app
from tests.helpers.inference import (
    SMALL_INPUT,
    installed_detector,
    save_lightning_checkpoint,
    save_published_checkpoint,
    write_mixed_folder,
    write_video,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_lightning_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.ckpt")


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_with_good_and_bad_files(checkpoint, tmp_path, capsys):
    kinds = write_mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    status = run_app(
        predict.main,
        [
            f"ckpt_path={checkpoint}",
            f"source={tmp_path / 'in'}",
            f"output_dir={out}",
            f"save_faces={tmp_path / 'crops'}",
            f"detector={installed_detector()}",
            "device=cpu",
            "image_batch=4",
        ],
    )
    err = capsys.readouterr().err
    assert status == predict.EXIT_SOME_FAILED
    assert "Traceback" not in err
    for name, kind in kinds.items():
        if kind == "bad":
            (line,) = [ln for ln in err.splitlines() if ln.startswith("error:") and name in ln]
        elif kind == "skipped":
            assert f"{name}: skipped" in err
        else:
            assert name not in err
    assert "6 images, 0 videos, 8 faces, 1 image without a face, 4 failed, 1 skipped" in err
    lines = read_jsonl(out / "predictions.jsonl")
    per_source = {}
    for line in lines:
        keys = {"source", "output", "face", "box", "score", "label", "probs", "temperature"}
        assert set(line) == keys and line["temperature"] is None  # no fitted temperature
        if line["face"] is None:  # an image without a face keeps one row, its face empty
            assert line["box"] is None and line["label"] is None and line["probs"] is None
            per_source[line["source"]] = 0
            continue
        per_source[line["source"]] = per_source.get(line["source"], 0) + 1
        assert sum(line["probs"].values()) == pytest.approx(1, abs=1e-4)
    # One line per face, and one for the blank image, which has none: every image read.
    expected = {
        "face.jpg": 1,
        "nested/four.png": 4,
        "gray.png": 1,
        "rgba.png": 1,
        "deep.png": 1,
        "blank.png": 0,
    }
    assert per_source == expected
    csv_rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert len(csv_rows) == len(lines) and any(r.startswith("blank.png,") for r in csv_rows)
    assert (out / "nested" / "four.png").is_file() and (out / "blank.png").is_file()
    assert len(list((tmp_path / "crops").rglob("*.png"))) == 8


def test_video_file(checkpoint, tmp_path, capsys):
    video = write_video(tmp_path / "clip.avi", frames=12)
    out = tmp_path / "out"
    status = run_app(
        predict.main,
        [
            f"ckpt_path={checkpoint}",
            f"source={video}",
            f"output_dir={out}",
            f"detector={installed_detector()}",
            "device=cpu",
            "recycle_every=5",
        ],
    )
    assert status == 0, capsys.readouterr().err
    frames_with_faces = sorted({line["frame"] for line in read_jsonl(out / "predictions.jsonl")})
    assert frames_with_faces == [i for i in range(12) if i % 4 != 3]
    annotated = cv2.VideoCapture(str(out / "clip.avi.mp4"))
    count = 0
    while annotated.read()[0]:
        count += 1
    assert count == 12


def test_missing_inputs_and_usage_errors_are_one_line(checkpoint, tmp_path, capsys):
    def run(*args: str) -> tuple[int, str]:
        status = run_app(predict.main, list(args))
        return status, capsys.readouterr().err

    # A source that is not there is a typed path: exit 2, and no output folder is made.
    cases = [
        ((f"source={tmp_path / 'nope.mp4'}",), 2, "nope.mp4: no such file or folder"),
        (("source=7",), 2, "webcam 7: no camera"),
        ((f"source={tmp_path / 'absent'}",), 2, "absent: no such file or folder"),
        (("source=x.jpg", "detecter=dlib"), 1, "Key 'detecter' is not in struct"),
        (("source=x.jpg", "batch_size=many"), 2, "batch_size='many': expected a number"),
    ]
    for args, expected_status, message in cases:
        status, err = run(
            f"ckpt_path={checkpoint}", f"output_dir={tmp_path / 'o'}", "detector=none", *args
        )
        assert status == expected_status and message in err, err
        assert "Traceback" not in err
        assert not (tmp_path / "o").exists()
    (tmp_path / "x.jpg").write_bytes(b"")
    status, err = run(f"ckpt_path={tmp_path / 'absent.ckpt'}", f"source={tmp_path / 'x.jpg'}")
    assert status == 2 and "absent.ckpt does not exist" in err


@pytest.mark.slow
def test_module_entry_point_reports_without_traceback(checkpoint, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fer_lightning.predict",
            f"ckpt_path={checkpoint}",
            f"source={tmp_path / 'nope.mp4'}",
            f"output_dir={tmp_path / 'o'}",
            "detector=none",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "nope.mp4: no such file or folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_onnx_export_parity_and_recognizer(tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    checkpoint = save_published_checkpoint(tmp_path / "small.pt", seed=3)
    onnx_path = tmp_path / "small.onnx"
    status = run_app(
        export.main,
        [
            f"ckpt_path={checkpoint}",
            "format=onnx",
            f"output={onnx_path}",
            f"input_size={SMALL_INPUT}",
        ],
    )
    out = capsys.readouterr().out
    assert status == 0 and "(ok" in out
    diff = float(out.split("difference ")[1].split()[0])
    assert diff <= PARITY_TOLERANCE
    images = [ASTRONAUT_PATH, mosaic(astronaut())]
    by_onnx = EmotionRecognizer.from_checkpoint(onnx_path, detector=installed_detector())
    by_torch = EmotionRecognizer.from_checkpoint(
        checkpoint,
        device="cpu",
        detector=installed_detector(),
        precision="fp32",
        input_size=SMALL_INPUT,
    )
    assert by_onnx.classifier.input_size == SMALL_INPUT
    for a_faces, b_faces in zip(
        by_onnx.predict_batch(images), by_torch.predict_batch(images), strict=True
    ):
        assert [f.box for f in a_faces] == [f.box for f in b_faces]
        a = np.array([list(f.probs.values()) for f in a_faces])
        b = np.array([list(f.probs.values()) for f in b_faces])
        np.testing.assert_allclose(a, b, atol=1e-4)
