"""Face detection off the event loop: a pool of detectors, each used by one thread at a time.

A detector is not shared between threads (yunet's runs in a child process fed through one pipe),
so each call takes a free detector from the pool and gives it back; with one detector, requests
are detected one after the other while the event loop goes on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fer_lightning.faces.detectors import Detection, FaceDetector


class DetectorPool:
    """``detect(image)`` on one of ``detectors``, in a worker thread."""

    def __init__(self, detectors: Sequence[FaceDetector]) -> None:
        if not detectors:
            raise ValueError("A detector pool needs at least one detector.")
        self.detectors = list(detectors)
        self._free: queue.SimpleQueue[FaceDetector] = queue.SimpleQueue()
        for detector in self.detectors:
            self._free.put(detector)
        self._executor = ThreadPoolExecutor(
            max_workers=len(self.detectors), thread_name_prefix="fer-detect"
        )

    @property
    def name(self) -> str:
        return self.detectors[0].name

    async def detect(self, image: np.ndarray) -> list[Detection]:
        """The faces in ``image`` (H, W, 3) BGR uint8."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._detect, image)

    def _detect(self, image: np.ndarray) -> list[Detection]:
        detector = self._free.get()
        try:
            return detector.detect(image)
        finally:
            self._free.put(detector)

    def warm_up(self) -> None:
        """Run every detector once (starting worker processes, loading weights)."""
        blank = np.full((64, 64, 3), 128, np.uint8)
        for detector in self.detectors:
            detector.detect(blank)

    def close(self) -> None:
        """Wait for running detections, then stop the detectors' worker processes."""
        self._executor.shutdown(wait=True)
        for detector in self.detectors:
            close = getattr(detector, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
