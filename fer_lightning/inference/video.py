"""Emotion recognition over video files and webcams, frame batch by frame batch.

Frames are read with OpenCV, faces found by the recogniser's detector (in a recycled worker
process for ``yunet``, whose memory leak would otherwise grow with the video), and the faces
of ``frame_batch`` frames go through the network together.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fer_lightning.faces.detector_worker import RecycledDetector
from fer_lightning.faces.detectors import FaceDetector
from fer_lightning.inference.drawing import draw_faces
from fer_lightning.inference.recognizer import EmotionRecognizer, FacePrediction

# Backends known to leak per call; they run in a recycled child process over videos.
LEAKY_DETECTORS = frozenset({"yunet"})


class VideoError(ValueError):
    """A video file or camera that cannot be opened or written."""


@dataclass(frozen=True)
class FrameResult:
    """The faces found in frame ``index`` (0-based) of a video."""

    index: int
    faces: list[FacePrediction]


def open_capture(source: str | Path | int) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture`` for a file path or a webcam index; :class:`VideoError`
    naming the source otherwise."""
    if isinstance(source, int):
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise VideoError(f"webcam {source}: no camera with this index could be opened.")
        return capture
    path = Path(source)
    if not path.is_file():
        raise VideoError(f"{path}: no such video file.")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"{path}: OpenCV cannot read it as a video (damaged or unknown codec).")
    return capture


def video_detector(recognizer: EmotionRecognizer, recycle_every: int) -> FaceDetector:
    """The detector to use over a video: the recogniser's, in a recycled worker if it leaks."""
    detector = recognizer.detector
    if detector.name in LEAKY_DETECTORS and not isinstance(detector, RecycledDetector):
        options = {"min_score": getattr(detector, "min_score", None)}
        options["max_side"] = getattr(detector, "max_side", None)
        return RecycledDetector(detector.name, recycle_every=recycle_every, **options)
    return detector


def predict_video(
    recognizer: EmotionRecognizer,
    source: str | Path | int,
    output_path: str | Path | None = None,
    *,
    frame_batch: int = 8,
    max_frames: int | None = None,
    recycle_every: int = 500,
    save_faces: str | Path | None = None,
    fourcc: str = "mp4v",
) -> Iterator[FrameResult]:
    """Yield the faces of every frame of ``source`` (a video file or a webcam index).

    With ``output_path`` the annotated video is written there (same size and frame rate,
    ``fourcc`` codec). ``max_frames`` stops early (webcams run until it, or forever).
    ``save_faces`` writes crops as ``frame<index>_face<j>.png``.
    """
    capture = open_capture(source)
    fps = capture.get(cv2.CAP_PROP_FPS)
    writer: cv2.VideoWriter | None = None
    detector = video_detector(recognizer, recycle_every)
    index = 0
    try:
        while max_frames is None or index < max_frames:
            frames: list[np.ndarray] = []
            while len(frames) < frame_batch and (
                max_frames is None or index + len(frames) < max_frames
            ):
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(frame)
            if not frames:
                break
            if writer is None and output_path is not None:
                writer = _open_writer(output_path, frames[0], fps, fourcc)
            detections = [detector.detect(frame) for frame in frames]
            names = [f"frame{index + i:06d}" for i in range(len(frames))]
            faces = recognizer.recognize(frames, detections, save_faces, names)
            for frame, frame_faces in zip(frames, faces, strict=True):
                if writer is not None:
                    writer.write(draw_faces(frame, frame_faces))
                yield FrameResult(index, frame_faces)
                index += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if detector is not recognizer.detector and isinstance(detector, RecycledDetector):
            detector.close()


def _open_writer(path: str | Path, frame: np.ndarray, fps: float, fourcc: str) -> cv2.VideoWriter:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frame.shape[:2]
    # Webcams often report 0 fps; 25 keeps the written file playable.
    rate = fps if fps and fps > 0 else 25.0
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), rate, (width, height))
    if not writer.isOpened():
        raise VideoError(f"{path}: OpenCV cannot write a {fourcc} video there.")
    return writer
