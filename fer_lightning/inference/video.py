"""Emotion recognition over video files and webcams, frame batch by frame batch.

Frames are read with OpenCV, faces found by the recogniser's detector (in a recycled worker
process for ``yunet``, whose memory leak would otherwise grow with the video), and the faces
of ``frame_batch`` frames go through the network together. Each result carries the frame's
index and time. ``every_n_frames`` analyses every n-th frame only; the annotated video still
has every frame, the ones in between showing the latest analysed faces. With ``tracking`` (the
default) every face gets its person's ``track_id`` and smoothed probabilities
(:mod:`fer_lightning.inference.people`), and the annotated video shows the id and the smoothed
label. :func:`predict_frames` does the same for any iterator of images (a live stream).

A file that ends before the frame count its header announces (a truncated download, a copy
cut short) raises :class:`TruncatedVideoError` after the frames that could be read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from fer_lightning.faces.detector_worker import RecycledDetector
from fer_lightning.faces.detectors import FaceDetector
from fer_lightning.inference.drawing import draw_faces
from fer_lightning.inference.outputs import OutputWriteError, partial_path
from fer_lightning.inference.people import FaceTracks, TrackingOptions
from fer_lightning.inference.predictions import FacePrediction, FaceRecognizer
from fer_lightning.inference.tables import face_rows, frame_table

# Backends known to leak per call; they run in a recycled child process over videos.
LEAKY_DETECTORS = frozenset({"yunet"})
# Some containers only estimate their frame count from the duration: a stream that ends this
# many frames short of it, or fewer, is complete.
FRAME_COUNT_SLACK = 1
# Webcams often report 0 fps; 25 keeps the written file playable.
FALLBACK_FPS = 25.0


class VideoError(ValueError):
    """A video file or camera that cannot be opened or written."""


class TruncatedVideoError(VideoError):
    """The stream ended before the frame count in the file's header."""

    def __init__(self, source: str | Path, frames_read: int, frames_expected: int) -> None:
        self.frames_read = frames_read
        self.frames_expected = frames_expected
        super().__init__(
            f"{source}: the video ended early: {frames_read} of the {frames_expected} frames its "
            "header announces could be read (truncated or damaged file); the results cover the "
            f"{frames_read} frames read."
        )


@dataclass(frozen=True)
class FrameResult:
    """The faces found in frame ``index`` (0-based) of a video, at ``time_s`` seconds (from
    the frame rate for files, the clock for webcams)."""

    index: int
    faces: list[FacePrediction]
    time_s: float | None = None


@contextmanager
def _opencv_path(path: Path) -> Iterator[str]:
    """A name OpenCV can open for ``path``: itself, or (for a name that is not valid UTF-8,
    which OpenCV cannot take) a link to it with a plain name in a temporary folder."""
    try:
        os.fsencode(path).decode("utf-8")
        yield str(path)
        return
    except UnicodeDecodeError:
        pass
    folder = tempfile.mkdtemp(prefix="fer-video-")
    try:
        alias = Path(folder) / f"video{path.suffix.encode('ascii', 'replace').decode()}"
        os.symlink(os.path.abspath(path), alias)
        yield str(alias)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    with _opencv_path(path) as name:
        # The file stays open after the link is gone.
        capture = cv2.VideoCapture(name)
    if not capture.isOpened():
        raise VideoError(f"{path}: OpenCV cannot read it as a video (damaged or unknown codec).")
    return capture


def frame_count(capture: cv2.VideoCapture) -> int | None:
    """The number of frames the header announces; None for streams and webcams."""
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    return count if count > 0 else None


def video_detector(recognizer: FaceRecognizer, recycle_every: int) -> FaceDetector:
    """The detector to use over a video: the recogniser's, in a recycled worker if it leaks."""
    detector = recognizer.detector
    if detector.name in LEAKY_DETECTORS and not isinstance(detector, RecycledDetector):
        options = {"min_score": getattr(detector, "min_score", None)}
        options["max_side"] = getattr(detector, "max_side", None)
        return RecycledDetector(detector.name, recycle_every=recycle_every, **options)
    return detector


def predict_video(
    recognizer: FaceRecognizer,
    source: str | Path | int,
    output_path: str | Path | None = None,
    *,
    frame_batch: int = 8,
    max_frames: int | None = None,
    every_n_frames: int = 1,
    recycle_every: int = 500,
    save_faces: str | Path | None = None,
    fourcc: str = "mp4v",
    tracking: TrackingOptions | None = TrackingOptions(),  # noqa: B008 (frozen, never changed)
) -> Iterator[FrameResult]:
    """Yield the faces of every ``every_n_frames``-th frame of ``source`` (a video file or a
    webcam index), with the frame's index and time.

    With ``output_path`` the annotated video is written there (every frame, same size and
    frame rate, ``fourcc`` codec) under a temporary name and renamed into place when the
    generator is exhausted or closed; after an error there is none. ``max_frames`` stops
    after that many frames (webcams run until it, or forever). ``save_faces`` writes crops as
    ``frame<index>_face<j>.png``. ``tracking`` gives each face its ``track_id`` and smoothed
    probabilities (None: faces are not tracked). Raises :class:`TruncatedVideoError` after the
    last frame of a file that ends early.
    """
    if every_n_frames < 1:
        raise ValueError(f"every_n_frames must be at least 1, not {every_n_frames}.")
    people = None if tracking is None else tracking.tracker()
    capture = open_capture(source)
    expected = None if isinstance(source, int) else frame_count(capture)
    frames = _FrameReader(capture, isinstance(source, int), max_frames, every_n_frames)
    detector = video_detector(recognizer, recycle_every)
    writer: _AnnotatedVideo | None = None
    latest: list[FacePrediction] = []  # what frames that are not analysed show
    complete = False
    try:
        while batch := frames.next_batch(frame_batch):
            if writer is None and output_path is not None:
                writer = _AnnotatedVideo(Path(output_path), batch[0].image, frames.fps, fourcc)
            found = _recognize(recognizer, detector, batch, save_faces)
            for frame in batch:  # in reading order
                if frame.index in found:
                    latest = _tracked(people, found[frame.index])
                    found[frame.index] = latest
                if writer is not None:
                    writer.write(draw_faces(frame.image, latest))
                if frame.index in found:
                    yield FrameResult(frame.index, found[frame.index], frame.time_s)
        complete = True
    except GeneratorExit:
        complete = True  # the consumer stopped early: keep the frames written so far
        raise
    finally:
        capture.release()
        if writer is not None:
            writer.close(keep=complete)
        if detector is not recognizer.detector and isinstance(detector, RecycledDetector):
            detector.close()
    if expected is not None and frames.stopped_short_of(expected):
        raise TruncatedVideoError(source, frames.read, expected)


def predict_frames(
    recognizer: FaceRecognizer,
    frames: Iterable[np.ndarray],
    *,
    tracking: TrackingOptions | None = TrackingOptions(),  # noqa: B008 (frozen, never changed)
) -> Iterator[FrameResult]:
    """The faces of each image of ``frames`` (any iterator of (H, W, 3) BGR uint8 images, such
    as a live stream's), one :class:`FrameResult` per image (``time_s`` None), tracked across
    them as :func:`predict_video` tracks a video's frames."""
    people = None if tracking is None else tracking.tracker()
    for index, image in enumerate(frames):
        faces = recognizer.recognize([image], [recognizer.detector.detect(image)])[0]
        yield FrameResult(index, _tracked(people, faces))


def _tracked(people: FaceTracks | None, faces: list[FacePrediction]) -> list[FacePrediction]:
    return faces if people is None else people.update(faces)


@dataclass(frozen=True)
class _Frame:
    index: int
    image: np.ndarray
    time_s: float | None
    analysed: bool


class _FrameReader:
    """Reads a capture's frames in order, with their index, time and whether to analyse them
    (every ``every_n_frames``-th), up to ``max_frames``."""

    def __init__(
        self,
        capture: cv2.VideoCapture,
        is_webcam: bool,
        max_frames: int | None,
        every_n_frames: int,
    ) -> None:
        self.capture = capture
        self.is_webcam = is_webcam
        self.max_frames = max_frames
        self.every_n_frames = every_n_frames
        self.fps = capture.get(cv2.CAP_PROP_FPS)
        self.started = time.monotonic()
        self.read = 0  # frames read so far
        self.ended = False

    @property
    def reached_limit(self) -> bool:
        return self.max_frames is not None and self.read >= self.max_frames

    def stopped_short_of(self, expected: int) -> bool:
        """Whether the stream ended before ``expected`` frames (its header's count), rather
        than at ``max_frames``."""
        return not self.reached_limit and self.read < expected - FRAME_COUNT_SLACK

    def _time(self, index: int) -> float | None:
        """Seconds from the start: the clock for webcams, the frame rate for files."""
        if self.is_webcam:
            return time.monotonic() - self.started
        return index / self.fps if self.fps and self.fps > 0 else None

    def next_batch(self, analysed_per_batch: int) -> list[_Frame]:
        """The next frames, up to ``analysed_per_batch`` analysed ones (with the frames skipped
        between them); empty at the end of the stream or at ``max_frames``."""
        batch: list[_Frame] = []
        analysed = 0
        while analysed < analysed_per_batch and not (self.ended or self.reached_limit):
            ok, image = self.capture.read()
            if not ok:
                self.ended = True
                break
            index, self.read = self.read, self.read + 1
            is_analysed = index % self.every_n_frames == 0
            analysed += is_analysed
            batch.append(_Frame(index, image, self._time(index), is_analysed))
        return batch


def _recognize(
    recognizer: FaceRecognizer,
    detector: FaceDetector,
    batch: list[_Frame],
    save_faces: str | Path | None,
) -> dict[int, list[FacePrediction]]:
    """Frame index -> faces, for the analysed frames of ``batch`` (one network pass)."""
    analysed = [frame for frame in batch if frame.analysed]
    if not analysed:
        return {}
    images = [frame.image for frame in analysed]
    detections = [detector.detect(image) for image in images]
    names = [f"frame{frame.index:06d}" for frame in analysed]
    faces = recognizer.recognize(images, detections, save_faces, names)
    return {frame.index: f for frame, f in zip(analysed, faces, strict=True)}


def video_table(
    recognizer: FaceRecognizer,
    source: str | Path | int,
    output_path: str | Path | None = None,
    *,
    name: str | None = None,
    **options: object,
) -> pd.DataFrame:
    """Every analysed frame's faces as a predictions table (:mod:`fer_lightning.inference.
    tables`): one row per face, with ``frame`` and ``time_s``. ``options`` go to
    :func:`predict_video` (``every_n_frames``, ``max_frames``, ...)."""
    label = name or (f"webcam{source}" if isinstance(source, int) else str(source))
    output = "" if output_path is None else str(output_path)
    rows = []
    for result in predict_video(recognizer, source, output_path, **options):
        rows += face_rows(result.faces, label, output, result.index, result.time_s)
    return frame_table(rows, recognizer.labels)


class _AnnotatedVideo:
    """An OpenCV video writer on a temporary file in the target's folder, renamed onto the
    target when closed (OpenCV gets a plain ASCII name whatever the target's)."""

    def __init__(self, path: Path, frame: np.ndarray, fps: float, fourcc: str) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputWriteError(path, error) from None
        self.tmp = partial_path(path)
        height, width = frame.shape[:2]
        rate = fps if fps and fps > 0 else FALLBACK_FPS
        code = cv2.VideoWriter_fourcc(*fourcc)
        self.writer = cv2.VideoWriter(str(self.tmp), code, rate, (width, height))
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise VideoError(f"{path}: OpenCV cannot write a {fourcc} video there.")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        self.writer.release()
        try:
            if keep and self.frames and self.tmp.stat().st_size > 0:
                os.replace(self.tmp, self.path)
            elif keep and self.frames:
                # OpenCV reports no write errors; an empty file after frames means one.
                raise OSError(0, "OpenCV wrote nothing (full disk or unwritable folder?)")
        except OSError as error:
            raise OutputWriteError(self.path, error) from None
        finally:
            self.tmp.unlink(missing_ok=True)
