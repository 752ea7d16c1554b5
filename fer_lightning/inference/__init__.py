"""Inference: face detection, emotion recognition, drawing, video and ONNX models.

>>> from fer_lightning.inference import EmotionRecognizer, create_detector
>>> recognizer = EmotionRecognizer.from_checkpoint("best.ckpt", detector="yunet")
>>> for face in recognizer.predict("photo.jpg"):
...     print(face.box, face.label, face.probs)

Names are imported lazily (PEP 562), so that ``import fer_lightning.inference`` stays cheap and
the detectors (:mod:`fer_lightning.faces`) can be used without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Detection": "fer_lightning.faces.detectors",
    "DetectorUnavailableError": "fer_lightning.faces.detectors",
    "FaceDetector": "fer_lightning.faces.detectors",
    "YuNetDetector": "fer_lightning.faces.detectors",
    "DlibDetector": "fer_lightning.faces.detectors",
    "OpenCVYuNetDetector": "fer_lightning.faces.detectors",
    "WholeImageDetector": "fer_lightning.faces.detectors",
    "available_detectors": "fer_lightning.faces.detectors",
    "create_detector": "fer_lightning.faces.detectors",
    "ImageError": "fer_lightning.faces.images",
    "load_image": "fer_lightning.faces.images",
    "read_image": "fer_lightning.faces.images",
    "to_bgr": "fer_lightning.faces.images",
    "crop_face": "fer_lightning.faces.crop",
    "crop_faces": "fer_lightning.faces.crop",
    "eye_tilt_degrees": "fer_lightning.faces.crop",
    "draw_faces": "fer_lightning.inference.drawing",
    "EmotionClassifier": "fer_lightning.inference.backends",
    "OnnxClassifier": "fer_lightning.inference.backends",
    "TorchClassifier": "fer_lightning.inference.backends",
    "EmotionRecognizer": "fer_lightning.inference.recognizer",
    "FacePrediction": "fer_lightning.inference.predictions",
    "FaceExplanation": "fer_lightning.inference.explain",
    "save_face_crops": "fer_lightning.inference.recognizer",
    "RecycledDetector": "fer_lightning.faces.detector_worker",
    "ASTRONAUT_PATH": "fer_lightning.inference.samples",
    "astronaut": "fer_lightning.inference.samples",
    "mosaic": "fer_lightning.inference.samples",
    "predict_video": "fer_lightning.inference.video",
    "predict_frames": "fer_lightning.inference.video",
    "FaceTracks": "fer_lightning.inference.people",
    "TrackingOptions": "fer_lightning.inference.people",
    "IouTracker": "fer_lightning.inference.tracking",
    "ProbabilitySmoother": "fer_lightning.inference.smoothing",
    "PeopleClip": "fer_lightning.inference.samples",
    "people_clip": "fer_lightning.inference.samples",
    "tracks_table": "fer_lightning.inference.tables",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
