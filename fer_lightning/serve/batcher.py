"""Faces of concurrent requests through the network together.

Each request announces itself when its image arrives (:meth:`FaceBatcher.incoming`), then,
once decoded and detected, hands its faces over and awaits the result. A collector task runs
everything waiting through the network in one call, in a worker thread so that the event loop
keeps serving. It waits for company only while other announced requests are still on their
way, and at most ``window_s`` after the oldest waiting request arrived (or until ``max_faces``
faces wait): a lone request runs at once. Requests that arrive while the network runs are
collected for the next call, so under load the batches grow by themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from fer_lightning.faces.detectors import Detection
from fer_lightning.inference.recognizer import FacePrediction

# recognizer.recognize: images and their detections -> one list of faces per image.
RecognizeFn = Callable[
    [Sequence[np.ndarray], Sequence[list[Detection]]], list[list[FacePrediction]]
]


class BatcherStoppedError(RuntimeError):
    """The server is shutting down: the request was not run."""


@dataclass
class BatchStats:
    """Counts of the network calls made so far (served in ``/healthz``)."""

    calls: int = 0
    requests: int = 0
    faces: int = 0
    calls_with_several_requests: int = 0
    largest_requests: int = 0
    largest_faces: int = 0

    def add(self, requests: int, faces: int) -> None:
        self.calls += 1
        self.requests += requests
        self.faces += faces
        self.calls_with_several_requests += requests > 1
        self.largest_requests = max(self.largest_requests, requests)
        self.largest_faces = max(self.largest_faces, faces)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Job:
    image: np.ndarray
    detections: list[Detection]
    future: asyncio.Future[list[FacePrediction]]
    arrived: float = field(default_factory=time.monotonic)


class FaceBatcher:
    """Runs ``recognize`` on the faces of many requests at once; one network call at a time.

    >>> with batcher.incoming() as slot:         # as soon as the request's image is read
    ...     detections = await detect(image)
    ...     faces = await slot.recognize(image, detections)
    """

    def __init__(self, recognize: RecognizeFn, window_s: float = 0.01, max_faces: int = 32):
        if window_s < 0 or max_faces < 1:
            raise ValueError(
                f"The batch window must be >= 0 and the batch size >= 1, got {window_s} s "
                f"and {max_faces}."
            )
        self._recognize = recognize
        self.window_s = float(window_s)
        self.max_faces = int(max_faces)
        self.stats = BatchStats()
        self._pending: deque[_Job] = deque()
        self._pending_faces = 0
        # Requests announced but not yet handed over (decoding, detecting).
        self._incoming = 0
        self._arrived: asyncio.Event | None = None  # set while jobs wait
        self._changed: asyncio.Event | None = None  # set on every arrival or withdrawal
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start collecting (in the running event loop)."""
        self._arrived, self._changed = asyncio.Event(), asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fer-network")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="fer-batcher")

    async def stop(self) -> None:
        """Stop collecting; requests still waiting get :class:`BatcherStoppedError`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        _fail(list(self._pending), BatcherStoppedError("The server is shutting down."))
        self._pending.clear()
        self._pending_faces = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @contextlib.contextmanager
    def incoming(self) -> Iterator[Slot]:
        """Announce a request whose faces will follow: batches wait for it (up to the
        window) instead of leaving without it."""
        slot = Slot(self)
        self._incoming += 1
        try:
            yield slot
        finally:
            slot.withdraw()

    async def recognize(
        self, image: np.ndarray, detections: list[Detection]
    ) -> list[FacePrediction]:
        """The emotions of ``detections`` in ``image``, run in the next batch."""
        if not detections:
            return []
        if self._task is None or self._task.done():
            raise BatcherStoppedError("The server is shutting down.")
        assert self._arrived is not None and self._changed is not None
        future: asyncio.Future[list[FacePrediction]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Job(image, list(detections), future))
        self._pending_faces += len(detections)
        self._arrived.set()
        self._changed.set()
        return await future

    def _withdraw(self) -> None:
        self._incoming -= 1
        if self._changed is not None:
            self._changed.set()

    async def _collect(self) -> None:
        assert self._arrived is not None and self._changed is not None
        while True:
            await self._arrived.wait()
            deadline = self._pending[0].arrived + self.window_s
            while self._incoming > 0 and self._pending_faces < self.max_faces:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):  # TimeoutError from 3.11
                    await asyncio.wait_for(self._changed.wait(), remaining)
            await self._run(self._take())

    def _take(self) -> list[_Job]:
        """The oldest waiting jobs, up to ``max_faces`` faces (always at least one job)."""
        assert self._arrived is not None
        jobs: list[_Job] = []
        faces = 0
        while self._pending and (
            not jobs or faces + len(self._pending[0].detections) <= self.max_faces
        ):
            job = self._pending.popleft()
            self._pending_faces -= len(job.detections)
            if not job.future.done():  # a client that went away is not run
                jobs.append(job)
                faces += len(job.detections)
        if not self._pending:
            self._arrived.clear()
        return jobs

    async def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        assert self._executor is not None
        images = [job.image for job in jobs]
        detections = [job.detections for job in jobs]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self._executor, self._recognize, images, detections
            )
        except asyncio.CancelledError:
            _fail(jobs, BatcherStoppedError("The server is shutting down."))
            raise
        except Exception as error:  # reported to each request; the collector goes on
            _fail(jobs, error)
            return
        self.stats.add(len(jobs), sum(len(found) for found in detections))
        for job, faces in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(faces)


class Slot:
    """A request announced to a :class:`FaceBatcher` (see :meth:`FaceBatcher.incoming`)."""

    def __init__(self, batcher: FaceBatcher) -> None:
        self._batcher = batcher
        self._open = True

    async def recognize(
        self, image: np.ndarray, detections: list[Detection]
    ) -> list[FacePrediction]:
        """Hand the faces over (the batch stops waiting for this request) and await them."""
        self.withdraw()
        return await self._batcher.recognize(image, detections)

    def withdraw(self) -> None:
        """This request brings no (more) faces: batches stop waiting for it."""
        if self._open:
            self._open = False
            self._batcher._withdraw()


def _fail(jobs: list[_Job], error: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(error)
