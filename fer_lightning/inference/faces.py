"""Face crops as the network was trained on them: square, grayscale, 48x48.

The training data (FER2013 and friends) are 48x48 grayscale faces; the network input is then
made from them on the device by :func:`fer_lightning.data.to_model_input`. Here a detection
becomes such a crop: a square around the box's centre, ``1 + margin`` times the box's mean side
(as the published package cropped), optionally rotated so that the eyes are level (as the
published webcam demo did), with black outside the image, and area-averaged down to 48x48.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from fer_lightning.inference.detectors import Detection
from fer_lightning.labels import FACE_SIZE

DEFAULT_MARGIN = 0.1
# Below this the eyes are level enough; rotating would only blur the crop.
MIN_TILT_DEG = 2.0
# Landmarks (right eye, left eye, ...) disagreeing with the box this much are not trusted.
MAX_TILT_DEG = 60.0
# Crops are sampled at most this large before area-averaging to 48 (8x oversampling).
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

    With ``align`` and landmarks, the square is rotated about the box centre so that the eyes
    come out level.
    """
    x0, y0, x1, y1 = detection.box
    centre_x, centre_y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    side = max(2.0, (1.0 + margin) * ((x1 - x0) + (y1 - y0)) / 2.0)
    angle = eye_tilt_degrees(detection.landmarks) if align else 0.0
    if abs(angle) < MIN_TILT_DEG:
        angle = 0.0
    # Sample the square at (about) its native resolution, then area-average down: a direct
    # warp to 48x48 would alias large faces.
    native = int(min(max(round(side), size), MAX_NATIVE_SIDE))
    scale = native / side
    # Affine map source -> native square: rotate by ``angle`` about the centre, scale, and move
    # the centre to the square's centre.
    matrix = cv2.getRotationMatrix2D((centre_x, centre_y), angle, scale)
    matrix[0, 2] += native / 2.0 - centre_x
    matrix[1, 2] += native / 2.0 - centre_y
    square = cv2.warpAffine(
        gray,
        matrix,
        (native, native),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    if native == size:
        return square
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


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
