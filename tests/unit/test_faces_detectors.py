"""Face detectors: the bundled photo, a mosaic, a blank image, rotated copies, the worker."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fer_lightning.faces.crop import crop_face
from fer_lightning.faces.detector_worker import RecycledDetector
from fer_lightning.inference import (
    Detection,
    DetectorUnavailableError,
    create_detector,
    eye_tilt_degrees,
)
from fer_lightning.inference.samples import astronaut, mosaic


def box_centre(box: tuple[int, int, int, int]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def assert_one_face_per_quadrant(found: list[Detection], size: int) -> None:
    assert len(found) == 4
    quadrants = {
        (int(c[0] // size), int(c[1] // size)) for c in map(box_centre, (d.box for d in found))
    }
    assert quadrants == {(0, 0), (0, 1), (1, 0), (1, 1)}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return astronaut()


@pytest.fixture(scope="module")
def yunet():
    pytest.importorskip("yuface")
    return create_detector("yunet")


@pytest.fixture(scope="module")
def dlib_detector():
    pytest.importorskip("dlib")
    return create_detector("dlib")


def test_yunet_finds_the_astronaut_with_landmarks(yunet, photo):
    (face,) = yunet.detect(photo)
    x0, y0, x1, y1 = face.box
    # The face (not the flag, the shuttle or the helmet) in the upper middle of the photo.
    assert 95 < x0 < x1 < 185 and 25 < y0 < y1 < 125 and face.score > 0.8
    right_eye, left_eye, nose, right_mouth, left_mouth = face.landmarks
    # The subject's right eye is on the image's left; eyes above the nose above the mouth.
    assert right_eye[0] < nose[0] < left_eye[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in face.landmarks)


def test_yunet_mosaic_blank_and_grayscale(yunet, photo):
    assert_one_face_per_quadrant(yunet.detect(mosaic(photo)), photo.shape[0])
    assert yunet.detect(np.zeros_like(photo)) == []
    assert len(yunet.detect(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))) == 1


@pytest.mark.parametrize("angle", [90, 20])
def test_yunet_rotated_copy(yunet, photo, angle):
    centre = (photo.shape[1] / 2, photo.shape[0] / 2)
    matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
    rotated = cv2.warpAffine(photo, matrix, photo.shape[1::-1])
    (upright,) = yunet.detect(photo)
    (found,) = yunet.detect(rotated)
    expected = matrix @ np.append(box_centre(upright.box), 1.0)
    assert np.linalg.norm(box_centre(found.box) - expected) < 15


def test_yunet_large_image_is_downscaled_and_mapped_back(yunet, photo):
    big = cv2.resize(photo, (1600, 1600), interpolation=cv2.INTER_CUBIC)  # > 960 px per side
    (small_face,) = yunet.detect(photo)
    (big_face,) = yunet.detect(big)
    assert np.allclose(np.array(big_face.box) / 5.0, small_face.box, atol=4)


def test_dlib_photo_mosaic_blank(dlib_detector, photo):
    (face,) = dlib_detector.detect(photo)
    assert face.landmarks is None and 0.5 < face.score < 1.0
    assert np.linalg.norm(box_centre(face.box) - np.array([140, 75])) < 15
    assert_one_face_per_quadrant(dlib_detector.detect(mosaic(photo)), photo.shape[0])
    assert dlib_detector.detect(np.zeros_like(photo)) == []


def test_none_detector_is_the_whole_image(photo):
    (face,) = create_detector("none").detect(photo)
    assert face.box == (0, 0, 320, 320) and face.score == 1.0


def test_auto_prefers_yunet_and_names_are_checked():
    pytest.importorskip("yuface")
    assert create_detector("auto").name == "yunet"
    with pytest.raises(ValueError, match="Unknown detector 'ssd'"):
        create_detector("ssd")


def test_opencv_yunet_fetches_its_model_file_like_the_published_weights(tmp_path, monkeypatch):
    """Without model_path the ONNX file comes from the release URL into the cache, verified
    against OpenCV's published SHA-256 and size; offline, the message says how to get it. (The
    real YuNet file cannot be had here: what is served is refused and not kept; a bad file in
    the cache is named with the advice to delete it.)"""
    from tests.helpers.http import FileServer

    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DetectorUnavailableError, match=r"face_detection_yunet_2023mar\.onnx"):
        create_detector("opencv_yunet")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    served = tmp_path / "served.onnx"
    served.write_bytes(b"not an onnx graph")
    server = FileServer()
    server.files["face_detection_yunet_2023mar.onnx"] = served
    monkeypatch.setenv("FER_RELEASE_URL", server.url)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    try:
        with pytest.raises(DetectorUnavailableError, match="not the published 232589"):
            create_detector("opencv_yunet")
    finally:
        server.stop()
    cached = tmp_path / "cache" / "face_detection_yunet_2023mar.onnx"
    assert not cached.exists()
    assert server.requests == ["face_detection_yunet_2023mar.onnx"]
    # A file that was put in the cache (checksums off, as for a private mirror) but does not
    # load: named, with what to do.
    monkeypatch.setenv("FER_VERIFY_CHECKSUMS", "0")
    cached.write_bytes(b"not an onnx graph")
    with pytest.raises(DetectorUnavailableError, match="OpenCV could not load") as error:
        create_detector("opencv_yunet")
    assert str(cached) in str(error.value) and "delete it" in str(error.value)


def test_tilt_correction_levels_the_eyes(photo):
    """Rotate the photo 25 degrees, move the upright landmarks with it, and the aligned crop
    matches the upright crop much better than the unaligned one."""
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    eyes = np.array([[127, 63], [152, 63], [139, 77], [127, 89], [150, 88]], np.float32)
    upright = Detection((112, 39, 167, 107), 1.0, eyes)
    matrix = cv2.getRotationMatrix2D((160, 160), 25, 1.0)
    rotated = cv2.warpAffine(gray, matrix, (320, 320))
    moved = (matrix @ np.hstack([eyes, np.ones((5, 1), np.float32)]).T).T.astype(np.float32)
    centre = matrix @ np.array([139.5, 73.0, 1.0])
    box = (
        round(centre[0] - 27.5),
        round(centre[1] - 34),
        round(centre[0] + 27.5),
        round(centre[1] + 34),
    )
    tilted = Detection(box, 1.0, moved)
    assert eye_tilt_degrees(moved) == pytest.approx(-25, abs=0.5)
    reference = crop_face(gray, upright).astype(np.float32)
    aligned = crop_face(rotated, tilted, align=True).astype(np.float32)
    unaligned = crop_face(rotated, tilted, align=False).astype(np.float32)
    assert aligned.shape == (48, 48)
    assert np.abs(aligned - reference).mean() < 0.5 * np.abs(unaligned - reference).mean()
    assert np.corrcoef(aligned.ravel(), reference.ravel())[0, 1] > 0.9


def test_recycled_worker_gives_the_same_faces_and_restarts(yunet, photo):
    frames = [photo, mosaic(photo), np.zeros_like(photo)]
    with RecycledDetector("yunet", recycle_every=2) as worker:
        for frame in frames * 2:
            here, there = yunet.detect(frame), worker.detect(frame)
            assert [d.box for d in here] == [d.box for d in there]
            for a, b in zip(here, there, strict=True):
                np.testing.assert_allclose(a.landmarks, b.landmarks)
        first_pid = worker.pid
        worker.detect(photo)
        assert worker.restarts == 4 and worker.pid != first_pid


@pytest.mark.parametrize("box", [(112, 39, 167, 107), (-20, 250, 40, 330), (0, 0, 320, 320)])
def test_unrotated_crop_is_the_dataset_converters_crop(photo, box):
    """Inference crops faces exactly as fer_lightning.data.convert cut the training faces."""
    convert = pytest.importorskip("fer_lightning.data.convert")
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    detection = Detection(box, 1.0)

    class FixedBox:  # stands in for a detector that found ``box``
        def detect(self, image):
            return [detection]

    cropper = convert.SquareCropper("none")
    cropper._detector = FixedBox()  # the converter has no public way to pass a detector object
    expected, method = cropper(gray)
    assert method.startswith("detector")
    np.testing.assert_array_equal(crop_face(gray, detection, align=False), expected)


def test_the_detector_worker_ignores_ctrl_c_and_exits_quietly(capfd):
    """Ctrl-C (or a notebook kernel's shutdown) interrupts the parent, not the worker: the
    worker keeps serving until the parent ends it, and prints no KeyboardInterrupt traceback."""
    import os
    import signal
    import time

    image = np.zeros((40, 40, 3), np.uint8)
    worker = RecycledDetector("none")
    try:
        assert len(worker.detect(image)) == 1
        assert os.getpgid(worker.pid) != os.getpgid(0)  # out of the terminal's process group
        os.kill(worker.pid, signal.SIGINT)
        time.sleep(0.5)
        assert len(worker.detect(image)) == 1
        pid = worker.pid
    finally:
        worker.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended by close(), not left behind
    assert "KeyboardInterrupt" not in capfd.readouterr().err
