"""Converters: JAFFE / FACES / image-folder names -> FER-format CSVs with subject and crop."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from fer_lightning.data.convert import SquareCropper, convert
from fer_lightning.data.csv_reader import read_face_csv
from fer_lightning.data.errors import DatasetError


def _image(path: Path, height: int, width: int, seed: int, color: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3) if color else (height, width), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def _columns(csv: Path) -> list[list[str]]:
    lines = csv.read_text().splitlines()
    return [line.split(",") for line in lines]


def test_jaffe(tmp_path):
    src = tmp_path / "jaffe"
    names = {"KA.AN1.39.tiff": 0, "KA.HA2.30.tiff": 3, "YM.SU3.59.tiff": 5, "TM.NE1.177.tiff": 6}
    grays = {n: _image(src / n, 120, 90, seed=i) for i, n in enumerate(names)}
    out = tmp_path / "jaffe.csv"
    report = convert("jaffe", src, out)
    assert report.rows == 4 and report.crops == {"center": 4}
    table = read_face_csv(out)
    rows = _columns(out)
    assert rows[0] == ["emotion", "pixels", "subject", "crop"]
    order = sorted(names)  # files are converted in name order
    assert table.labels.tolist() == [names[n] for n in order]
    assert [r[2] for r in rows[1:]] == [n.split(".")[0] for n in order]
    # Centred square crop of a portrait image: rows 15..105 of 120, then area resize.
    expected = cv2.resize(grays[order[0]][15:105], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(table.faces[0], expected)


def test_faces_without_surprise_and_colour_jpegs(tmp_path):
    src = tmp_path / "FACES"
    names = {"004_o_m_a_a.jpg": 0, "004_o_m_d_b.jpg": 1, "066_y_f_h_a.jpg": 3, "140_m_f_n_b.jpg": 6}
    for i, name in enumerate(names):
        _image(src / "sub" / name, 70, 56, seed=i, color=True)
    out = tmp_path / "faces.csv.gz"
    convert("faces", src, out)
    table = read_face_csv(out)
    assert sorted(table.labels.tolist()) == sorted(names.values())
    assert table.faces.shape == (4, 48, 48)


def test_folder_maps_class_names_to_fer_order(tmp_path):
    src = tmp_path / "fer_images"
    # Alphabetical folder order (angry disgust fear happy neutral sad surprise) is not FER order.
    for split in ("train", "val", "test"):
        for cls in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"):
            _image(src / split / cls / "im1.png", 48, 48, seed=len(cls))
    out = tmp_path / "fer2013.csv"
    convert("folder", src, out)
    table = read_face_csv(out)
    rows = _columns(out)[1:]
    got = {(r[2], r[0]) for r in rows}
    assert {(u, lab) for u, lab in got if u == "Training"} == {
        ("Training", str(i)) for i in range(7)
    }
    by_class = {r[0]: r for r in rows if r[2] == "Training"}
    neutral_pixels = by_class["6"][1]
    assert neutral_pixels == " ".join(map(str, _image(tmp_path / "n.png", 48, 48, seed=7).ravel()))
    assert sorted(np.bincount(table.usage).tolist()) == [7, 7, 7]


def test_bad_names_and_unreadable_images_are_reported_not_skipped(tmp_path):
    src = tmp_path / "jaffe"
    _image(src / "KA.AN1.39.tiff", 50, 50, seed=0)
    _image(src / "KA.XX1.40.tiff", 50, 50, seed=1)  # unknown expression code
    (src / "KA.HA1.41.tiff").write_bytes(b"not an image")
    out = tmp_path / "jaffe.csv"
    with pytest.raises(DatasetError) as err:
        convert("jaffe", src, out)
    message = str(err.value)
    assert "2 problem(s), nothing written" in message
    assert "KA.XX1.40.tiff: not a JAFFE name" in message
    assert "KA.HA1.41.tiff: not an image file" in message
    assert not out.exists()
    report = convert("jaffe", src, out, skip_bad=True)
    assert report.rows == 1 and len(report.problems) == 2
    assert read_face_csv(out).labels.tolist() == [0]


def test_folder_with_unknown_class(tmp_path):
    _image(tmp_path / "src" / "train" / "contempt" / "a.jpg", 48, 48, seed=0)
    with pytest.raises(DatasetError, match="unknown split 'train' or class 'contempt'"):
        convert("folder", tmp_path / "src", tmp_path / "out.csv")


def test_missing_source_folder(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        convert("faces", tmp_path / "nope", tmp_path / "out.csv")


def test_detector_crop_is_recorded(tmp_path, monkeypatch):
    import fer_lightning.faces.detectors as detectors

    class FakeDetector:
        def __init__(self, box):
            self.box = box

        def detect(self, image):
            return [SimpleNamespace(box=self.box, score=0.9, landmarks=None)] if self.box else []

    monkeypatch.setattr(detectors, "create_detector", lambda name: FakeDetector((20, 30, 60, 70)))
    cropper = SquareCropper("fake")
    image = np.random.default_rng(0).integers(0, 256, (100, 100), dtype=np.uint8)
    face, method = cropper(image)
    assert method == "detector:fake"
    # 40 px box + 10% margin each side = 48 px square centred on (40, 50).
    np.testing.assert_array_equal(face, image[26:74, 16:64])

    monkeypatch.setattr(detectors, "create_detector", lambda name: FakeDetector(None))
    face, method = SquareCropper("fake")(image[:, :80])
    assert method == "center:no-face"
    expected = cv2.resize(image[10:90, :80], (48, 48), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(face, expected)


def test_unavailable_detector_is_a_clear_error(monkeypatch):
    import fer_lightning.faces.detectors as detectors

    def unavailable(name):
        raise RuntimeError("No face detector is installed. Install one: pip install ...")

    monkeypatch.setattr(detectors, "create_detector", unavailable)
    with pytest.raises(DatasetError, match="--detector auto: No face detector is installed"):
        SquareCropper("auto")
