"""The HTTP service: ``create_app(recognizer)`` is a FastAPI app that serves

- ``POST /v1/predict``: one image (the raw body or the multipart field ``image``) -> its size
  and one entry per face, in the schema of a ``predictions.jsonl`` line (box, score, label,
  probs); with ``?session=<id>`` (the web page's webcam mode) the faces are tracked across that
  session's frames and also get ``track_id``, ``smoothed_label`` and ``smoothed_probs``
  (:mod:`fer_lightning.serve.sessions`);
- ``POST /v1/explain``: one image, sent as to ``/v1/predict`` -> its faces as there, each also
  with ``target`` (the class the Grad-CAM is of: ``?target=<label>``, by default the predicted
  one), ``maps`` (name -> 48 rows of 48 values in [0, 1] over the face crop: ``gradcam``, and
  for the masking networks ``mask1`` ... ``mask4`` and ``masks``) and ``crop_matrix`` (the
  2x3 affine from the file's pixels to the crop's); ``?format=png``: the image with each face's
  Grad-CAM drawn over it instead (:mod:`fer_lightning.inference.explain`). One explanation runs
  at a time, beside the batched predictions;
- ``DELETE /v1/sessions/<id>``: forget a session's tracks (the page sends it when it stops);
- ``GET /healthz`` (model, device, precision, detector, batching counts), ``GET /v1/labels``;
- ``GET /``: the web page (``static/index.html``); ``/docs``: the OpenAPI page.

Nothing blocks the event loop: forms are parsed and images decoded in a small thread pool (at a
working size, within a budget of decoded pixels shared by all requests), faces detected by a
:class:`DetectorPool` and the network runs in the :class:`FaceBatcher`'s thread, which
batches the faces of concurrent requests. Every error is a JSON ``{"detail": message}`` with
its status, a short one; nothing is written to disk. :mod:`fer_lightning.serve.server` runs it
under uvicorn with limits on connections.

The pieces: :class:`Service` (what a request goes through), :func:`add_error_handlers`,
:func:`add_routes` and :func:`create_app`, which puts them together.
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

import cv2
import numpy as np
from fastapi import FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from fer_lightning.faces.detector_worker import DetectorWorkerError
from fer_lightning.faces.detectors import FaceDetector
from fer_lightning.inference.backends import TorchClassifier
from fer_lightning.inference.recognizer import EmotionRecognizer
from fer_lightning.serve.batcher import BatcherStoppedError, FaceBatcher
from fer_lightning.serve.detection import DetectorPool
from fer_lightning.serve.drain import DrainNotice, ServerStoppingError
from fer_lightning.serve.memory import PixelBudget, give_back_memory
from fer_lightning.serve.sessions import SESSION_ID, TrackSessions
from fer_lightning.serve.uploads import (
    FORM_FIELD,
    MEGABYTE,
    DecodedImage,
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
# Error messages are cut to this length: a client never gets its own input back in bulk.
MAX_DETAIL_CHARS = 500
# Memory is given back to the system once the server is idle after decoding this many pixels.
TRIM_AFTER_PIXELS = 16_000_000


@dataclass(frozen=True)
class Limits:
    """What the service takes: ``max_body_bytes`` per request body (413 above), ``max_pixels``
    per image (413 above, read from the header), ``body_timeout_s`` to send a body (408 after)
    and ``max_requests`` predictions at once (503 beyond, instead of an ever longer queue).
    Images are detected and cropped at ``working_pixels`` at most (reduced by an integer
    factor; boxes are given in the file's pixels), and all requests together hold at most
    ``pixels_in_flight`` decoded pixels (more wait for their turn to decode)."""

    max_body_bytes: int = 20 * MEGABYTE
    max_pixels: int = 50_000_000
    body_timeout_s: float = 60.0
    max_requests: int = 512
    working_pixels: int = 16_000_000
    pixels_in_flight: int = 64_000_000

    def __post_init__(self) -> None:
        values = (self.max_body_bytes, self.max_pixels, self.body_timeout_s, self.max_requests)
        if min(*values, self.working_pixels, self.pixels_in_flight) <= 0:
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
    track_id: int | None = Field(
        default=None, description="with ?session=: the person, the same across the session's frames"
    )
    smoothed_label: str | None = Field(
        default=None, description="with ?session=: the most likely emotion after smoothing"
    )
    smoothed_probs: dict[str, float] | None = Field(
        default=None, description="with ?session=: probs smoothed over the person's frames"
    )


class Prediction(BaseModel):
    width: int
    height: int
    faces: list[Face]
    calibrated: bool = Field(
        description="whether probs are divided by the model's fitted temperature (calibrated "
        "probabilities) or are the network's raw softmax"
    )
    temperature: float | None = Field(
        default=None, description="the temperature probs were computed with, when calibrated"
    )


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


def _short(message: str) -> str:
    return message if len(message) <= MAX_DETAIL_CHARS else message[: MAX_DETAIL_CHARS - 3] + "..."


class Service:
    """What a prediction goes through (body, form, decoding, detection, the batched network)
    and what ``/healthz`` reports about it."""

    def __init__(
        self,
        recognizer: EmotionRecognizer,
        limits: Limits,
        batching: BatchPolicy,
        detectors: Sequence[FaceDetector] | None,
    ) -> None:
        self.recognizer = recognizer
        self.limits = limits
        self.batching = batching
        self.pool = DetectorPool(detectors or [recognizer.detector])
        self.batcher = FaceBatcher(
            recognizer.recognize, batching.window_ms / 1000, batching.max_faces
        )
        self.decoders = ThreadPoolExecutor(
            max_workers=DECODE_WORKERS, thread_name_prefix="fer-decode"
        )
        self.budget = PixelBudget(max(limits.pixels_in_flight, limits.working_pixels))
        self.drain = DrainNotice()
        self.sessions = TrackSessions()
        # Explanations take gradients through the model: one at a time.
        self.explaining = asyncio.Lock()
        self.in_flight = 0  # predict requests being answered (one event loop: no lock needed)
        self._decoded_since_trim = 0
        classifier = recognizer.classifier
        self.model = getattr(getattr(classifier, "model", None), "arch", None) or getattr(
            classifier, "arch", type(classifier).__name__
        )

    @asynccontextmanager
    async def lifespan(self, _: FastAPI) -> AsyncIterator[None]:
        """Load what loads lazily (detector processes, oneDNN kernels) before the first
        request; stop the workers after the last."""
        classifier = self.recognizer.classifier
        await asyncio.to_thread(self.pool.warm_up)
        await asyncio.to_thread(classifier, np.zeros((1, 48, 48), np.uint8))
        await self.batcher.start()
        log.info(
            "Ready: %r, detector %s x%d.", classifier, self.pool.name, len(self.pool.detectors)
        )
        provenance = self.recognizer.provenance
        if provenance is not None and provenance.warning:
            log.warning("%s", provenance.warning)
        try:
            yield
        finally:
            # uvicorn has let the requests in flight finish before this runs.
            await self.batcher.stop()
            self.pool.close()
            self.decoders.shutdown(wait=True)

    def health(self) -> dict[str, Any]:
        classifier = self.recognizer.classifier
        provenance = self.recognizer.provenance
        limits = self.limits
        return {
            "status": "ok",
            "model_loaded": True,
            "model": str(self.model),
            "provenance": None if provenance is None else provenance.to_dict(),
            "warning": None if provenance is None else provenance.warning,
            # Whether the probabilities are divided by a fitted temperature (calibrate=...).
            "calibration": classifier.calibration_info(),
            "device": str(getattr(classifier, "device", "cpu")),
            "precision": str(getattr(classifier, "precision", "fp32")),
            "input_size": int(classifier.input_size),
            "detector": self.pool.name,
            "detector_workers": len(self.pool.detectors),
            "labels": list(self.recognizer.labels),
            "limits": {
                "max_body_mb": limits.max_body_bytes / MEGABYTE,
                "max_pixels": limits.max_pixels,
                "body_timeout_s": limits.body_timeout_s,
                "max_requests": limits.max_requests,
                "working_pixels": limits.working_pixels,
                "pixels_in_flight": self.budget.capacity,
            },
            "requests_in_flight": self.in_flight,
            "track_sessions": len(self.sessions),
            "pixels_held": self.budget.held,
            "batching": {
                "window_ms": self.batching.window_ms,
                "max_faces": self.batching.max_faces,
                **self.batcher.stats.to_dict(),
            },
        }

    async def predict(
        self, request: Request, response: Response, session: str | None = None
    ) -> dict[str, Any]:
        """One prediction, refused at once (503) beyond ``max_requests`` at a time and cut
        short with a 503 when a shutdown's grace runs out; tracked across ``session``'s
        frames when given."""
        if self.in_flight >= self.limits.max_requests:
            raise UploadError(
                503, f"The server is busy ({self.limits.max_requests} requests at once); try again."
            )
        self.in_flight += 1
        try:
            return await self.drain.run(self._answer(request, response, session))
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._decoded_since_trim >= TRIM_AFTER_PIXELS:
                self._decoded_since_trim = 0
                asyncio.get_running_loop().run_in_executor(self.decoders, give_back_memory)

    async def _read_body(self, request: Request) -> bytes:
        limits = self.limits
        try:
            return await asyncio.wait_for(
                read_body(
                    request.stream(), request.headers.get("content-length"), limits.max_body_bytes
                ),
                limits.body_timeout_s,
            )
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
            raise UploadError(
                408, f"The request body did not arrive within {limits.body_timeout_s:g} s."
            ) from None

    def _decode(self, content_type: str | None, body: bytes) -> DecodedImage:
        """In a decoding thread: the form parsed, the image decoded at its working size."""
        data = image_bytes(content_type, body)
        del body
        limits = self.limits
        return decode_image(data, limits.max_pixels, limits.working_pixels, self.budget)

    async def _decode_off_loop(self, content_type: str | None, body: bytes) -> DecodedImage:
        future = asyncio.get_running_loop().run_in_executor(
            self.decoders, self._decode, content_type, body
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The decoding thread goes on: what it reserves is released when it finishes.
            future.add_done_callback(
                lambda done: None if done.exception() else done.result().release()
            )
            raise

    async def _answer(
        self, request: Request, response: Response, session: str | None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        content_type = request.headers.get("content-type")
        check_content_type(content_type)
        body = await self._read_body(request)
        # Announced now, so that a batch being collected waits for this request's faces.
        with self.batcher.incoming() as slot:
            decoded = await self._decode_off_loop(content_type, body)
            del body
            try:
                self._decoded_since_trim += decoded.width * decoded.height
                timings = {"upload": (started, time.perf_counter())}
                try:
                    detections = await self.pool.detect(decoded.image)
                    timings["detect"] = (timings["upload"][1], time.perf_counter())
                    faces = await slot.recognize(decoded.image, detections)
                    if session is not None:  # on the event loop: one frame at a time
                        faces = self.sessions.tracks(session).update(faces)
                    timings["recognize"] = (timings["detect"][1], time.perf_counter())
                except (BatcherStoppedError, DetectorWorkerError) as error:
                    raise UploadError(503, f"{error} Try again.") from None
            finally:
                decoded.release()
        response.headers["Server-Timing"] = ", ".join(
            f"{name};dur={1000 * (end - start):.1f}" for name, (start, end) in timings.items()
        )
        return {
            "width": decoded.width,
            "height": decoded.height,
            "faces": [{**face.to_dict(), "box": decoded.to_file_box(face.box)} for face in faces],
            **self.calibration(),
        }

    def calibration(self) -> dict[str, Any]:
        """What the answer's probabilities are: ``calibrated`` and, if so, ``temperature``."""
        temperature = self.recognizer.classifier.temperature
        return {"calibrated": temperature is not None, "temperature": temperature}

    async def explain(
        self, request: Request, target: str | None, as_png: bool
    ) -> dict[str, Any] | Response:
        """Where the network looked in one image (JSON maps, or a PNG overlay)."""
        if self.in_flight >= self.limits.max_requests:
            raise UploadError(
                503, f"The server is busy ({self.limits.max_requests} requests at once); try again."
            )
        self.in_flight += 1
        try:
            return await self.drain.run(self._explain(request, target, as_png))
        finally:
            self.in_flight -= 1

    async def _explain(
        self, request: Request, target: str | None, as_png: bool
    ) -> dict[str, Any] | Response:
        recognizer = self.recognizer
        if not isinstance(recognizer.classifier, TorchClassifier):
            raise UploadError(501, "This server runs an ONNX model: explanations need PyTorch.")
        try:
            recognizer.class_index(target)
        except ValueError as error:
            raise UploadError(422, str(error)) from None
        content_type = request.headers.get("content-type")
        check_content_type(content_type)
        body = await self._read_body(request)
        decoded = await self._decode_off_loop(content_type, body)
        del body
        try:
            try:
                detections = await self.pool.detect(decoded.image)
            except DetectorWorkerError as error:
                raise UploadError(503, f"{error} Try again.") from None
            async with self.explaining:
                (faces,) = await asyncio.to_thread(
                    recognizer.explain_detected, [decoded.image], [detections], target
                )
            if as_png:
                overlay = await asyncio.to_thread(
                    recognizer.draw_explanations, decoded.image, faces
                )
                _ok, png = cv2.imencode(".png", overlay)
                return Response(content=png.tobytes(), media_type="image/png")
        finally:
            decoded.release()
        sx, sy = decoded.scale
        return {
            "width": decoded.width,
            "height": decoded.height,
            "faces": [
                {
                    **face.to_dict(),
                    "box": decoded.to_file_box(face.box),
                    # The crop's matrix took the working image's pixels; these are the file's.
                    "crop_matrix": np.round(
                        face.matrix * np.array([1 / sx, 1 / sy, 1.0]), 6
                    ).tolist(),
                }
                for face in faces
            ],
            **self.calibration(),
        }


def add_error_handlers(app: FastAPI) -> None:
    """Every error as a short JSON ``{"detail": message}`` with its status."""

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, error: UploadError) -> JSONResponse:
        return JSONResponse({"detail": _short(error.message)}, status_code=error.status)

    @app.exception_handler(ServerStoppingError)
    async def server_stopping(_: Request, error: ServerStoppingError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(error)}, status_code=503, headers={"Connection": "close"}
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer lists every input back; one line is enough.
        first = next(iter(error.errors()), {})
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse(
            {"detail": _short(f"Invalid request: {where}: {first.get('msg', 'invalid')}.")},
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, error: Exception) -> JSONResponse:
        # Starlette raises the error on after this answer, so the server logs its traceback;
        # the client gets one line.
        return JSONResponse(
            {"detail": f"Internal error ({type(error).__name__}); see the server's log."},
            status_code=500,
        )


def add_routes(app: FastAPI, service: Service) -> None:
    """``/``, ``/healthz``, ``/v1/labels`` and ``/v1/predict``."""
    page = PAGE_PATH.read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Whether the model is loaded, what it is (``provenance``, and a ``warning`` for a
        model trained on synthetic faces), where it runs, and the batching so far."""
        return service.health()

    @app.get("/v1/labels")
    async def labels() -> dict[str, list[str]]:
        """The emotion names, in the order of the network's outputs."""
        return {"labels": list(service.recognizer.labels)}

    @app.post(
        "/v1/predict",
        response_model=Prediction,
        response_model_exclude_none=True,
        responses=PREDICT_ERRORS,
        openapi_extra=PREDICT_BODY,
    )
    async def predict(
        request: Request,
        response: Response,
        session: str | None = Query(
            default=None,
            pattern=f"^{SESSION_ID.pattern}$",
            description="track faces across the frames sent with this id (a webcam's)",
        ),
    ) -> dict[str, Any]:
        """The faces in one image and their emotions: send the image as the body
        (``Content-Type: image/jpeg``, ...) or as the form field ``image``. With
        ``session``, each face also gets its ``track_id`` and smoothed probabilities, kept
        across the frames sent with the same session id."""
        return await service.predict(request, response, session)

    @app.post(
        "/v1/explain",
        response_model=None,
        responses={
            **PREDICT_ERRORS,
            200: {"content": {"image/png": {}}, "description": "JSON maps, or a PNG overlay"},
            501: {"model": ErrorMessage, "description": "the server runs an ONNX model"},
        },
        openapi_extra=PREDICT_BODY,
    )
    async def explain(
        request: Request,
        format: str = Query(default="json", pattern="^(json|png)$"),
        target: str | None = Query(
            default=None, max_length=64, description="the class to explain (default: predicted)"
        ),
    ) -> dict[str, Any] | Response:
        """Where the network looked, per face: the faces as ``/v1/predict`` gives them, each
        with its maps over the 48x48 face crop (values in [0, 1]) and the affine matrix from
        the file's pixels to the crop's; ``format=png``: the image with the Grad-CAM of each
        face drawn over it, its box, label and score."""
        return await service.explain(request, target, format == "png")

    @app.delete(
        "/v1/sessions/{session}",
        status_code=204,
        responses={422: {"model": ErrorMessage, "description": "not a valid session id"}},
    )
    async def end_session(
        session: str = PathParam(pattern=f"^{SESSION_ID.pattern}$"),
    ) -> Response:
        """Forget the tracks of a session (the web page sends this when its webcam stops; an
        idle session is forgotten after two minutes anyway)."""
        service.sessions.end(session)
        return Response(status_code=204)


def create_app(
    recognizer: EmotionRecognizer,
    limits: Limits | None = None,
    batching: BatchPolicy | None = None,
    detectors: Sequence[FaceDetector] | None = None,
) -> FastAPI:
    """The service over ``recognizer``. ``detectors`` (default: the recogniser's own) detect
    faces in parallel, one thread each; ``limits`` bound what a request may send. The server
    tells ``app.state.drain`` (a :class:`DrainNotice`) when a graceful shutdown begins."""
    service = Service(recognizer, limits or Limits(), batching or BatchPolicy(), detectors)
    app = FastAPI(
        title="fer-lightning",
        version=_package_version(),
        description="Facial emotion recognition (Residual Masking Network) over HTTP.",
        lifespan=service.lifespan,
    )
    app.state.drain = service.drain
    add_error_handlers(app)
    add_routes(app, service)
    return app
