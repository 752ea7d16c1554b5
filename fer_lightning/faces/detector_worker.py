"""A face detector in a child process, replaced every ``recycle_every`` images.

``yuface`` keeps about 36 KB per call that it never frees; over a long video that grows
without bound. Running it in a child process that is replaced every few hundred frames bounds
the memory. The child is a plain ``python -m`` subprocess fed through pipes (not
``multiprocessing``), so it imports only numpy, OpenCV and the detector, not the parent's
``__main__`` with torch and Hydra.

Protocol, per image: the parent writes a 12-byte header (height, width, channels as uint32,
little-endian) and the raw BGR bytes; the child answers one JSON line: a list of
``[x0, y0, x1, y1, score, landmarks-or-null]``. An empty header (0, 0, 0) ends the child.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
from typing import BinaryIO

import numpy as np

from fer_lightning.faces.detectors import Detection, FaceDetector, as_bgr_uint8, create_detector

HEADER = struct.Struct("<III")
# How many images before a recycle the replacement child is started.
PRESTART_CALLS = 20


class DetectorWorkerError(RuntimeError):
    """The detection child process failed or died."""


class RecycledDetector(FaceDetector):
    """``create_detector(name, **options)`` run in a child process that is replaced after every
    ``recycle_every`` images, so that memory a backend leaks is given back to the system."""

    def __init__(self, name: str = "auto", recycle_every: int = 500, **options: object) -> None:
        if recycle_every < 1:
            raise ValueError(f"recycle_every must be at least 1, got {recycle_every}.")
        # Resolve ``auto`` and check the options here, so that mistakes surface in the parent.
        probe = create_detector(name, **options)
        self.name = probe.name
        self.gives_landmarks = probe.gives_landmarks
        self.options = {k: v for k, v in options.items() if v is not None}
        self.recycle_every = int(recycle_every)
        self.calls_since_start = 0
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        # The replacement is started a little ahead, so that its imports overlap the old work.
        self._next: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        options = {k: str(v) if k == "model_path" else v for k, v in self.options.items()}
        # The worker's entry is a function call, not a command line: nothing to parse. Ctrl-C
        # and a notebook kernel's shutdown interrupt the parent, which ends the child through
        # its pipe: the child ignores SIGINT from its first line (no KeyboardInterrupt
        # traceback from a child at exit) and runs in its own session, out of the terminal's
        # process group.
        entry = (
            "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "import json; from fer_lightning.faces.detector_worker import serve; "
            f"serve({self.name!r}, json.loads({json.dumps(options)!r}))"
        )
        command = [sys.executable, "-c", entry]
        environment = {**os.environ, "OMP_WAIT_POLICY": "passive"}
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=environment,
            start_new_session=True,
        )

    def _detect_bgr(self, image: np.ndarray) -> list[Detection]:
        prestart_at = self.recycle_every - PRESTART_CALLS
        if (
            self._process is not None
            and self._next is None
            and self.calls_since_start >= prestart_at
        ):
            self._next = self._spawn()
        if self._process is not None and self.calls_since_start >= self.recycle_every:
            self._stop(self._process)
            self._process = None
        if self._process is None:
            self._process, self._next = self._next or self._spawn(), None
            self.restarts += 1
            self.calls_since_start = 0
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(HEADER.pack(*image.shape))
            process.stdin.write(image.tobytes())
            process.stdin.flush()
            line = process.stdout.readline()
        except BrokenPipeError:
            line = b""
        if not line:
            self._process = None
            raise DetectorWorkerError(
                f"The {self.name} detection worker exited (status {process.poll()})."
            )
        self.calls_since_start += 1
        return [_detection_from_json(row) for row in json.loads(line)]

    def close(self) -> None:
        """Stop the child processes (a later call starts a new one)."""
        for process in (self._process, self._next):
            if process is not None:
                self._stop(process)
        self._process = self._next = None

    @staticmethod
    def _stop(process: subprocess.Popen[bytes]) -> None:
        try:
            assert process.stdin is not None
            process.stdin.write(HEADER.pack(0, 0, 0))
            process.stdin.close()
            process.wait(timeout=10)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __enter__(self) -> RecycledDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # At interpreter exit the pipes may already be gone; the children then see EOF.
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"RecycledDetector({self.name!r}, recycle_every={self.recycle_every})"


def _detection_from_json(row: list) -> Detection:
    x0, y0, x1, y1, score, landmarks = row
    points = None if landmarks is None else np.asarray(landmarks, dtype=np.float32)
    return Detection((x0, y0, x1, y1), score, points)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def serve(name: str, options: dict[str, object]) -> None:
    """The child's loop: images from stdin, detections to stdout, until the empty header."""
    detector = create_detector(name, **options)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            height, width, channels = HEADER.unpack(_read_exactly(stdin, HEADER.size))
            if height == 0:
                return
            data = _read_exactly(stdin, height * width * channels)
        except EOFError:
            return  # the parent went away
        image = np.frombuffer(data, np.uint8).reshape(height, width, channels)
        found = detector.detect(as_bgr_uint8(image))
        rows = [
            [*d.box, d.score, None if d.landmarks is None else d.landmarks.tolist()] for d in found
        ]
        try:
            stdout.write(json.dumps(rows).encode() + b"\n")
            stdout.flush()
        except BrokenPipeError:
            return  # the parent went away
