"""Face detectors whose weights ship inside pip packages, so that detection works offline.

Every backend answers the same question: where are the faces in a BGR image? Boxes are
``(x0, y0, x1, y1)`` integer pixel coordinates of the image given (``x1``/``y1`` exclusive),
clipped to it. Landmarks, where a backend has them, are five points (x, y) in the subject's
order: right eye, left eye, nose tip, right mouth corner, left mouth corner (the subject's right
eye is on the image's left in an unmirrored photo).

This module imports neither torch nor the optional backends at import time: the video path
runs detection in a short-lived worker process, which should start fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np

# yuface (libfacedetection) is compiled for images of at most this many pixels per side.
YUNET_MAX_SIDE = 960
# dlib's HOG detector scores below this are mostly false positives.
DLIB_MIN_SCORE = 0.3


class DetectorUnavailableError(RuntimeError):
    """The requested detector's package is not installed, or it lacks a required option."""


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` (x0, y0, x1, y1) in input pixels, ``score`` in [0, 1] and, where the
    backend gives them, ``landmarks`` (5, 2) float32 (right eye, left eye, nose, right and left
    mouth corners)."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray | None = field(default=None, compare=False)

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


class FaceDetector(ABC):
    """Image -> faces. Subclasses implement :meth:`_detect_bgr` on a contiguous BGR uint8 image."""

    #: Registry name, as given to :func:`create_detector`.
    name: str = ""
    #: Whether detections carry eye landmarks (used for tilt correction).
    gives_landmarks: bool = False

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Faces in ``image_bgr``: (H, W, 3) BGR or (H, W) grayscale, uint8. Best score first."""
        image = as_bgr_uint8(image_bgr)
        found = self._detect_bgr(image)
        height, width = image.shape[:2]
        clipped = [clip_detection(d, width, height) for d in found]
        kept = [d for d in clipped if d.width > 1 and d.height > 1]
        return sorted(kept, key=lambda d: -d.score)

    @abstractmethod
    def _detect_bgr(self, image: np.ndarray) -> list[Detection]: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def as_bgr_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|3) uint8 -> contiguous (H, W, 3) BGR uint8 (a C extension's needs)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError("Detectors take uint8 numpy images; use fer_lightning.inference.to_bgr.")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an (H, W, 3) BGR image, got shape {image.shape}.")
    return np.ascontiguousarray(image)


def clip_detection(detection: Detection, width: int, height: int) -> Detection:
    """The detection with its box clipped to a ``width`` x ``height`` image."""
    x0, y0, x1, y1 = detection.box
    box = (
        int(min(max(x0, 0), width)),
        int(min(max(y0, 0), height)),
        int(min(max(x1, 0), width)),
        int(min(max(y1, 0), height)),
    )
    return Detection(box, detection.score, detection.landmarks)


def downscale_to(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """(image no larger than ``max_side`` per side, factor that maps its pixels back)."""
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(small), longest / max_side


def _import_yuface() -> ModuleType:
    """``import yuface`` with its bundled OpenMP set to wait passively between calls.

    yuface loads its own copy of libgomp, which reads ``OMP_WAIT_POLICY`` once, when loaded.
    Its default (spinning) makes detection times swing by an order of magnitude with the load
    of the machine; passive waiting keeps them steady (benchmarks/README.md). The variable is
    restored afterwards so that other libraries loaded later are not affected.
    """
    if "yuface" in sys.modules:
        return sys.modules["yuface"]
    previous = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    try:
        return importlib.import_module("yuface")
    finally:
        if previous is None:
            os.environ.pop("OMP_WAIT_POLICY", None)


class YuNetDetector(FaceDetector):
    """YuNet through ``yuface`` (libfacedetection compiled in, BSD): boxes, scores, 5 landmarks.

    ``yuface`` wants at most 960 px per side, so larger images are downscaled first (the boxes
    are mapped back). It keeps about 36 KB per call that it never frees: long videos run it
    in a recycled worker process (:class:`RecycledDetector`).
    """

    name = "yunet"
    gives_landmarks = True

    def __init__(self, min_score: float = 0.5, max_side: int = YUNET_MAX_SIDE) -> None:
        try:
            yuface = _import_yuface()
        except ImportError as error:
            raise DetectorUnavailableError(
                "detector 'yunet' needs the yuface package (wheels for Python <= 3.11): "
                "pip install 'fer-lightning[yunet]'"
            ) from error
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}.")
        self._c_detect: Callable[[np.ndarray], np.ndarray] = yuface.c_detect
        self.min_score = min_score
        self.max_side = min(int(max_side), YUNET_MAX_SIDE)

    def _detect_bgr(self, image: np.ndarray) -> list[Detection]:
        small, scale = downscale_to(image, self.max_side)
        # One row per face, int16: score (0-100), x, y, w, h, 5 landmarks (x, y), padding.
        # (yuface.detect documents uint16, but coordinates can be negative at the borders.)
        rows = np.asarray(self._c_detect(small)).astype(np.float32)
        found = []
        for row in rows:
            score = float(row[0]) / 100.0
            if score < self.min_score:
                continue
            x, y, w, h = (row[1:5] * scale).tolist()
            landmarks = (row[5:15].reshape(5, 2) * scale).astype(np.float32)
            box = (round(x), round(y), round(x + w), round(y + h))
            found.append(Detection(box, score, landmarks))
        return found

    def __repr__(self) -> str:
        return f"YuNetDetector(min_score={self.min_score}, max_side={self.max_side})"


class DlibDetector(FaceDetector):
    """dlib's HOG + linear SVM frontal face detector (``dlib-bin``): boxes and scores only.

    Scores are SVM margins squashed to (0, 1) by a logistic; detections with a raw margin
    below ``min_score`` (0.3) are dropped. ``upsample`` doubles the image that many times to
    find faces smaller than about 80 px.
    """

    name = "dlib"

    def __init__(self, min_score: float = DLIB_MIN_SCORE, upsample: int = 1, max_side: int = 1280):
        try:
            import dlib
        except ImportError as error:
            raise DetectorUnavailableError(
                "detector 'dlib' needs the dlib package: pip install 'fer-lightning[dlib]' "
                "(dlib-bin, prebuilt wheels)"
            ) from error
        self._detector = dlib.get_frontal_face_detector()
        self.min_score = float(min_score)
        self.upsample = int(upsample)
        self.max_side = int(max_side)

    def _detect_bgr(self, image: np.ndarray) -> list[Detection]:
        small, scale = downscale_to(image, self.max_side)
        rgb = np.ascontiguousarray(small[:, :, ::-1])
        rects, margins, _ = self._detector.run(rgb, self.upsample, self.min_score)
        found = []
        for rect, margin in zip(rects, margins, strict=True):
            box = tuple(
                round(v * scale) for v in (rect.left(), rect.top(), rect.right(), rect.bottom())
            )
            found.append(Detection(box, float(1.0 / (1.0 + np.exp(-margin)))))
        return found

    def __repr__(self) -> str:
        return f"DlibDetector(min_score={self.min_score}, upsample={self.upsample})"


class OpenCVYuNetDetector(FaceDetector):
    """YuNet through ``cv2.FaceDetectorYN`` with its ONNX file
    (``face_detection_yunet_2023mar.onnx``): boxes, scores, landmarks. Without ``model_path``
    the file is fetched once, as the published weights are (:mod:`fer_lightning.models.hub`).
    """

    name = "opencv_yunet"
    gives_landmarks = True

    def __init__(
        self, model_path: str | Path | None = None, min_score: float = 0.6, nms: float = 0.3
    ) -> None:
        from_cache = model_path is None
        if from_cache:
            # Imported on use: fer_lightning.models loads torch, which the detector worker
            # process must not (yuface runs about 10x slower beside torch's OpenMP runtime).
            from fer_lightning.models.hub import PretrainedDownloadError, fetch

            try:
                model_path = fetch("yunet")
            except PretrainedDownloadError as error:
                raise DetectorUnavailableError(
                    f"detector 'opencv_yunet' needs YuNet's ONNX file: {error} (or pass "
                    "model_path=... in Python, detector.model_path=... on the command line)"
                ) from None
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise DetectorUnavailableError(f"YuNet ONNX model {path} does not exist.")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise DetectorUnavailableError("This OpenCV build has no cv2.FaceDetectorYN.")
        try:
            self._detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), min_score, nms)
        except cv2.error as error:
            reason = " ".join(str(error).split())
            advice = (
                " It is the download cache's copy: delete it and run again to download it anew."
                if from_cache
                else ""
            )
            raise DetectorUnavailableError(
                f"OpenCV could not load {path}: {reason}.{advice}"
            ) from None
        self.model_path = path

    def _detect_bgr(self, image: np.ndarray) -> list[Detection]:
        height, width = image.shape[:2]
        self._detector.setInputSize((width, height))
        _, faces = self._detector.detect(image)
        found = []
        # One row per face: x, y, w, h, 5 landmarks (x, y) in the same order as yuface, score.
        for row in faces if faces is not None else []:
            x, y, w, h = row[:4].tolist()
            box = (round(x), round(y), round(x + w), round(y + h))
            found.append(Detection(box, float(row[14]), row[4:14].reshape(5, 2).astype(np.float32)))
        return found

    def __repr__(self) -> str:
        return f"OpenCVYuNetDetector(model_path={str(self.model_path)!r})"


class WholeImageDetector(FaceDetector):
    """``none``: the image already is one face (pre-cropped input, the dataset CSVs)."""

    name = "none"

    def _detect_bgr(self, image: np.ndarray) -> list[Detection]:
        height, width = image.shape[:2]
        return [Detection((0, 0, width, height), 1.0)]


# Backends in the order ``auto`` tries them, with the module each needs.
DETECTORS: dict[str, tuple[type[FaceDetector], str | None]] = {
    "yunet": (YuNetDetector, "yuface"),
    "dlib": (DlibDetector, "dlib"),
    "opencv_yunet": (OpenCVYuNetDetector, None),
    "none": (WholeImageDetector, None),
}


def available_detectors() -> list[str]:
    """Names of the detectors usable here (``opencv_yunet`` also needs a model path)."""
    return [
        name
        for name, (_, module) in DETECTORS.items()
        if module is None or importlib.util.find_spec(module) is not None
    ]


def create_detector(name: str | FaceDetector = "auto", **options: object) -> FaceDetector:
    """The face detector ``name``: ``yunet``, ``dlib``, ``opencv_yunet``, ``none`` or ``auto``.

    ``auto`` takes ``yunet`` if ``yuface`` is installed, else ``dlib``, else ``opencv_yunet``
    when ``model_path`` is given; it never falls back to ``none`` (which would call any image a
    face). ``options`` go to the backend (``min_score``, ``max_side``, ``upsample``,
    ``model_path``). A ``FaceDetector`` instance is returned as it is. Raises
    :class:`DetectorUnavailableError` with the install command.
    """
    if isinstance(name, FaceDetector):
        return name
    key = str(name).lower().replace("-", "_")
    if key == "auto":
        if importlib.util.find_spec("yuface") is not None:
            key = "yunet"
        elif importlib.util.find_spec("dlib") is not None:
            key = "dlib"
        elif options.get("model_path"):
            key = "opencv_yunet"
        else:
            raise DetectorUnavailableError(
                "No face detector is installed. Install one: pip install 'fer-lightning[yunet]' "
                "(Python <= 3.11) or 'fer-lightning[dlib]'; or pass detector=opencv_yunet with "
                "model_path=..., or detector=none for images that are already face crops."
            )
        # ``auto`` forwards only the options the chosen backend understands.
        options = _options_for(key, options)
    if key not in DETECTORS:
        raise ValueError(f"Unknown detector {name!r}. Choose from: auto, {', '.join(DETECTORS)}.")
    detector_class, _ = DETECTORS[key]
    return detector_class(**options)


def _options_for(key: str, options: dict[str, object]) -> dict[str, object]:
    accepted = {
        "yunet": {"min_score", "max_side"},
        "dlib": {"min_score", "upsample", "max_side"},
        "opencv_yunet": {"model_path", "min_score", "nms"},
        "none": set(),
    }[key]
    return {k: v for k, v in options.items() if k in accepted}
