"""Face crops as the network was trained on them: square, grayscale, 48x48.

The training data are 48x48 grayscale faces; the network input is then made from them on the
device by :func:`fer_lightning.data.to_model_input`. Here a detection becomes such a crop the
way the dataset converter (``fer_lightning.data.convert``) cut its faces: a square
``1 + 2 * margin`` times the box's longer side around its centre, edge pixels repeated where it
leaves the image, area-averaged to 48x48. Optionally the square is first rotated so that the
eyes are level (as the published webcam demo did), when the detector gives eye landmarks.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fer_lightning.faces.detectors import Detection
from fer_lightning.labels import FACE_SIZE

# As fer_lightning.data.convert.CROP_MARGIN: detector boxes are tight.
DEFAULT_MARGIN = 0.1
# Below this the eyes are level enough; rotating would only resample the crop.
MIN_TILT_DEG = 2.0
# Landmarks (right eye, left eye, ...) disagreeing with the box this much are not trusted.
MAX_TILT_DEG = 60.0
# Rotated crops are sampled at most this large before area-averaging to 48 (8x oversampling).
MAX_NATIVE_SIDE = 8 * FACE_SIZE


def eye_tilt_degrees(landmarks: np.ndarray | None) -> float:
    """Angle (degrees, image coordinates, clockwise positive) of the line from the subject's
    right eye to their left eye; 0 without landmarks. ``landmarks``: (5, 2) or (>=2, 2)."""
    if landmarks is None or len(landmarks) < 2:
        return 0.0
    (rx, ry), (lx, ly) = landmarks[0], landmarks[1]
    angle = math.degrees(math.atan2(float(ly - ry), float(lx - rx)))
    return angle if abs(angle) <= MAX_TILT_DEG else 0.0


def crop_face(
    gray: np.ndarray,
    detection: Detection,
    margin: float = DEFAULT_MARGIN,
    align: bool = True,
    size: int = FACE_SIZE,
) -> np.ndarray:
    """The ``size`` x ``size`` uint8 grayscale crop of ``detection`` in ``gray`` (H, W) uint8.

    Without rotation this is pixel for pixel the dataset converter's crop. With ``align`` and
    landmarks tilted by more than 2 degrees, the square is rotated about the box centre so
    that the eyes come out level.
    """
    centre_x, centre_y, side, angle = _crop_square(detection, margin, align)
    if abs(angle) < MIN_TILT_DEG:
        square = _square(gray, centre_x, centre_y, side)
    else:
        square = _rotated_square(gray, centre_x, centre_y, side, angle)
    interpolation = cv2.INTER_AREA if square.shape[0] >= size else cv2.INTER_LINEAR
    return cv2.resize(square, (size, size), interpolation=interpolation)


def _crop_square(
    detection: Detection, margin: float, align: bool
) -> tuple[float, float, int, float]:
    """Centre (x, y), side (pixels) and rotation (degrees) of the square cut for ``detection``."""
    x0, y0, x1, y1 = detection.box
    side = max(1, round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    angle = eye_tilt_degrees(detection.landmarks) if align else 0.0
    return (x0 + x1) / 2, (y0 + y1) / 2, side, angle


def crop_matrix(
    detection: Detection,
    margin: float = DEFAULT_MARGIN,
    align: bool = True,
    size: int = FACE_SIZE,
) -> np.ndarray:
    """The (2, 3) float64 affine matrix taking image pixel coordinates (x, y) to coordinates in
    the ``size`` x ``size`` crop that :func:`crop_face` cuts for ``detection`` with the same
    arguments (pixel centres at integers on both sides). ``cv2.warpAffine(crop_map, matrix,
    (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)`` lays a map of the crop over the
    image."""
    centre_x, centre_y, side, angle = _crop_square(detection, margin, align)
    if abs(angle) < MIN_TILT_DEG:
        sx, sy = round(centre_x - side / 2), round(centre_y - side / 2)
        matrix = np.array([[1.0, 0.0, -sx], [0.0, 1.0, -sy]])
        square = side
    else:
        square = int(min(max(side, FACE_SIZE), MAX_NATIVE_SIDE))
        matrix = _rotation(centre_x, centre_y, side, angle, square)
    # Resizing the square to size x size: u = (v + 0.5) * size / square - 0.5.
    scale = size / square
    matrix = matrix * scale
    matrix[:, 2] += 0.5 * scale - 0.5
    return matrix


def _rotation(centre_x: float, centre_y: float, side: int, angle: float, native: int) -> np.ndarray:
    matrix = cv2.getRotationMatrix2D((centre_x, centre_y), angle, native / side)
    matrix[0, 2] += native / 2 - centre_x
    matrix[1, 2] += native / 2 - centre_y
    return matrix


def _square(gray: np.ndarray, centre_x: float, centre_y: float, side: int) -> np.ndarray:
    height, width = gray.shape
    sx, sy = round(centre_x - side / 2), round(centre_y - side / 2)
    pad = max(0, -sx, -sy, sx + side - width, sy + side - height)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return gray[sy + pad : sy + pad + side, sx + pad : sx + pad + side]


def _rotated_square(
    gray: np.ndarray, centre_x: float, centre_y: float, side: int, angle: float
) -> np.ndarray:
    # Sampled near native resolution (area-averaged to 48 afterwards): a direct warp to 48x48
    # would alias large faces.
    native = int(min(max(side, FACE_SIZE), MAX_NATIVE_SIDE))
    matrix = _rotation(centre_x, centre_y, side, angle, native)
    return cv2.warpAffine(
        gray, matrix, (native, native), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def crop_faces(
    image_bgr: np.ndarray,
    detections: list[Detection],
    margin: float = DEFAULT_MARGIN,
    align: bool = True,
) -> np.ndarray:
    """(N, 48, 48) uint8 crops of every detection in ``image_bgr`` (H, W, 3) BGR uint8."""
    if not detections:
        return np.zeros((0, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    return np.stack([crop_face(gray, d, margin, align) for d in detections])
