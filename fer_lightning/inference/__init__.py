"""Inference: face detection, emotion recognition, drawing, video and ONNX models.

>>> from fer_lightning.inference import EmotionRecognizer, create_detector
>>> recognizer = EmotionRecognizer.from_checkpoint("best.ckpt", detector="yunet")
>>> for face in recognizer.predict("photo.jpg"):
...     print(face.box, face.label, face.probs)

Names are imported lazily (PEP 562): the detector module alone imports neither torch nor the
optional backends, so the video path's detection worker process starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Detection": "detectors",
    "DetectorUnavailableError": "detectors",
    "FaceDetector": "detectors",
    "YuNetDetector": "detectors",
    "DlibDetector": "detectors",
    "OpenCVYuNetDetector": "detectors",
    "WholeImageDetector": "detectors",
    "available_detectors": "detectors",
    "create_detector": "detectors",
    "ImageError": "images",
    "load_image": "images",
    "read_image": "images",
    "to_bgr": "images",
    "crop_face": "faces",
    "crop_faces": "faces",
    "eye_tilt_degrees": "faces",
    "draw_faces": "drawing",
    "EmotionClassifier": "backends",
    "OnnxClassifier": "backends",
    "TorchClassifier": "backends",
    "EmotionRecognizer": "recognizer",
    "FacePrediction": "recognizer",
    "save_face_crops": "recognizer",
    "RecycledDetector": "detector_worker",
    "ASTRONAUT_PATH": "samples",
    "astronaut": "samples",
    "mosaic": "samples",
    "predict_video": "video",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"fer_lightning.inference.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
