"""The HTTP service: ``create_app(recognizer)`` is a FastAPI app that serves

- ``POST /v1/predict``: one image (the raw body or the multipart field ``image``) -> its size
  and one entry per face, in the schema of a ``predictions.jsonl`` line (box, score, label,
  probs);
- ``GET /healthz`` (model, device, precision, detector, batching counts), ``GET /v1/labels``;
- ``GET /``: the web page (``static/index.html``); ``/docs``: the OpenAPI page.

Nothing blocks the event loop: images are decoded in a small thread pool, faces detected by a
:class:`DetectorPool` and the network runs in the :class:`FaceBatcher`'s thread, which
batches the faces of concurrent requests. Every error is a JSON ``{"detail": message}`` with
its status; nothing is written to disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from fer_lightning.faces.detector_worker import DetectorWorkerError
from fer_lightning.faces.detectors import FaceDetector
from fer_lightning.inference.recognizer import EmotionRecognizer
from fer_lightning.serve.batcher import BatcherStoppedError, FaceBatcher
from fer_lightning.serve.detection import DetectorPool
from fer_lightning.serve.uploads import (
    FORM_FIELD,
    MEGABYTE,
    UploadError,
    check_content_type,
    decode_image,
    image_bytes,
    read_body,
)

log = logging.getLogger(__name__)

PAGE_PATH = Path(__file__).parent / "static" / "index.html"
# Decoding holds a whole image in memory: a few at a time bounds what concurrent uploads use.
DECODE_WORKERS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Limits:
    """What the service takes: ``max_body_bytes`` per request body (413 above), ``max_pixels``
    per image (413 above, read from the header), ``body_timeout_s`` to send a body (408 after)
    and ``max_requests`` predictions at once (503 beyond, instead of an ever longer queue)."""

    max_body_bytes: int = 20 * MEGABYTE
    max_pixels: int = 50_000_000
    body_timeout_s: float = 60.0
    max_requests: int = 512

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_pixels, self.body_timeout_s, self.max_requests) <= 0:
            raise ValueError(f"Every limit must be positive, got {self}.")


@dataclass(frozen=True)
class BatchPolicy:
    """How long a request's faces may wait for those of requests still being decoded or
    detected (``window_ms``; a lone request never waits) and how many faces one network call
    takes at most (``max_faces``)."""

    window_ms: float = 10.0
    max_faces: int = 32


class Face(BaseModel):
    box: list[int] = Field(description="x0, y0, x1, y1 in the image's pixels")
    score: float = Field(description="the detector's confidence")
    label: str = Field(description="the most likely emotion")
    probs: dict[str, float] = Field(description="emotion -> probability, summing to 1")


class Prediction(BaseModel):
    width: int
    height: int
    faces: list[Face]


class ErrorMessage(BaseModel):
    detail: str


# The body is read by hand (size limit while reading, nothing spooled to disk), so its schema
# is declared here for the OpenAPI page.
PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {FORM_FIELD: {"type": "string", "format": "binary"}},
                    "required": [FORM_FIELD],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorMessage, "description": text}
    for status, text in {
        400: "empty body or malformed form",
        408: "the body did not arrive within the time limit",
        413: "body or image larger than the limits",
        415: "not an image, or a Content-Type other than image/*, octet-stream or a form",
        422: "damaged, truncated or too small image; a form without the field 'image'",
        503: "busy, shutting down, or the detector failed; try again",
    }.items()
}


def _package_version() -> str:
    try:
        return metadata.version("fer-lightning")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def create_app(
    recognizer: EmotionRecognizer,
    limits: Limits | None = None,
    batching: BatchPolicy | None = None,
    detectors: Sequence[FaceDetector] | None = None,
) -> FastAPI:
    """The service over ``recognizer``. ``detectors`` (default: the recogniser's own) detect
    faces in parallel, one thread each; ``limits`` bound what a request may send."""
    limits = limits or Limits()
    batching = batching or BatchPolicy()
    pool = DetectorPool(detectors or [recognizer.detector])
    batcher = FaceBatcher(recognizer.recognize, batching.window_ms / 1000, batching.max_faces)
    decoders = ThreadPoolExecutor(max_workers=DECODE_WORKERS, thread_name_prefix="fer-decode")
    page = PAGE_PATH.read_text(encoding="utf-8")
    classifier = recognizer.classifier
    model = getattr(getattr(classifier, "model", None), "arch", None) or getattr(
        classifier, "arch", type(classifier).__name__
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Load what loads lazily (detector processes, oneDNN kernels) before the first request.
        await asyncio.to_thread(pool.warm_up)
        await asyncio.to_thread(classifier, np.zeros((1, 48, 48), np.uint8))
        await batcher.start()
        log.info("Ready: %r, detector %s x%d.", classifier, pool.name, len(pool.detectors))
        try:
            yield
        finally:
            # uvicorn has let the requests in flight finish before this runs.
            await batcher.stop()
            pool.close()
            decoders.shutdown(wait=True)

    app = FastAPI(
        title="fer-lightning",
        version=_package_version(),
        description="Facial emotion recognition (Residual Masking Network) over HTTP.",
        lifespan=lifespan,
    )
    in_flight = 0  # predict requests being answered (one event loop: no lock needed)

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception) -> JSONResponse:
        # Starlette raises the error on after this answer, so the server logs its traceback;
        # the client gets one line.
        return JSONResponse(
            {"detail": f"Internal error ({type(error).__name__}); see the server's log."},
            status_code=500,
        )

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Whether the model is loaded, where it runs, and the batching so far."""
        return {
            "status": "ok",
            "model_loaded": True,
            "model": str(model),
            "device": str(getattr(classifier, "device", "cpu")),
            "precision": str(getattr(classifier, "precision", "fp32")),
            "input_size": int(classifier.input_size),
            "detector": pool.name,
            "detector_workers": len(pool.detectors),
            "labels": list(recognizer.labels),
            "limits": {
                "max_body_mb": limits.max_body_bytes / MEGABYTE,
                "max_pixels": limits.max_pixels,
                "body_timeout_s": limits.body_timeout_s,
                "max_requests": limits.max_requests,
            },
            "requests_in_flight": in_flight,
            "batching": {
                "window_ms": batching.window_ms,
                "max_faces": batching.max_faces,
                **batcher.stats.to_dict(),
            },
        }

    @app.get("/v1/labels")
    async def labels() -> dict[str, list[str]]:
        """The emotion names, in the order of the network's outputs."""
        return {"labels": list(recognizer.labels)}

    @app.post(
        "/v1/predict",
        response_model=Prediction,
        responses=PREDICT_ERRORS,
        openapi_extra=PREDICT_BODY,
    )
    async def predict(request: Request, response: Response) -> dict[str, Any]:
        """The faces in one image and their emotions: send the image as the body
        (``Content-Type: image/jpeg``, ...) or as the form field ``image``."""
        nonlocal in_flight
        if in_flight >= limits.max_requests:
            raise UploadError(
                503, f"The server is busy ({limits.max_requests} requests at once); try again."
            )
        in_flight += 1
        try:
            return await answer(request, response)
        finally:
            in_flight -= 1

    async def answer(request: Request, response: Response) -> dict[str, Any]:
        started = time.perf_counter()
        content_type = request.headers.get("content-type")
        check_content_type(content_type)
        try:
            body = await asyncio.wait_for(
                read_body(
                    request.stream(), request.headers.get("content-length"), limits.max_body_bytes
                ),
                limits.body_timeout_s,
            )
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            raise UploadError(
                408, f"The request body did not arrive within {limits.body_timeout_s:g} s."
            ) from None
        data = image_bytes(content_type, body)
        loop = asyncio.get_running_loop()
        # Announced now, so that a batch being collected waits for this request's faces.
        with batcher.incoming() as slot:
            image = await loop.run_in_executor(decoders, decode_image, data, limits.max_pixels)
            decoded = time.perf_counter()
            try:
                detections = await pool.detect(image)
                detected = time.perf_counter()
                faces = await slot.recognize(image, detections)
            except (BatcherStoppedError, DetectorWorkerError) as error:
                raise UploadError(503, f"{error} Try again.") from None
        done = time.perf_counter()
        response.headers["Server-Timing"] = ", ".join(
            f"{name};dur={1000 * (end - start):.1f}"
            for name, start, end in (
                ("upload", started, decoded),
                ("detect", decoded, detected),
                ("recognize", detected, done),
            )
        )
        height, width = image.shape[:2]
        return {"width": width, "height": height, "faces": [face.to_dict() for face in faces]}

    return app
