"""fer-serve: the app in-process (every error status, quick) and a real server process on
127.0.0.1 (faces on the photo and the mosaic, errors over the wire, 200 concurrent requests
against sequential ones, and a graceful stop on SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import statistics
import subprocess
import time

import cv2
import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from fer_lightning.cli.serve import ServeConfig, UserError
from fer_lightning.inference import EmotionRecognizer, FacePrediction, TorchClassifier
from fer_lightning.inference.samples import ASTRONAUT_PATH, astronaut, mosaic
from fer_lightning.models import create_model
from fer_lightning.serve import Limits, create_app
from tests.helpers.hydra import compose_config
from tests.helpers.inference import (
    SMALL_ARCH,
    SMALL_INPUT,
    installed_detector,
    png_with_claimed_size,
    save_lightning_checkpoint,
)
from tests.helpers.serve import running_server

MB = 1024 * 1024
FACE_KEYS = set(FacePrediction((0, 0, 1, 1), 1.0, "happy", {"happy": 1.0}).to_dict())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_lightning_checkpoint(tmp_path_factory.mktemp("ckpt") / "small.ckpt")


@pytest.fixture(scope="module")
def photo() -> bytes:
    return ASTRONAUT_PATH.read_bytes()


def encoded(image: np.ndarray, suffix: str = ".png") -> bytes:
    ok, data = cv2.imencode(suffix, image)
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def mosaic_jpeg() -> bytes:
    return encoded(mosaic(astronaut()), ".jpg")


def claimed_png(tmp_path_factory, width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height pixels."""
    path = tmp_path_factory.mktemp("png") / f"{width}x{height}.png"
    return png_with_claimed_size(path, width, height).read_bytes()


def error_cases(photo: bytes, tmp_path_factory) -> dict[str, tuple[dict, int, str]]:
    """name -> (httpx request arguments, expected status, part of the message)."""
    jpeg = {"Content-Type": "image/jpeg"}
    png = {"Content-Type": "image/png"}
    return {
        "not an image": ({"content": b"this is not a picture", "headers": jpeg}, 415, "not an"),
        "truncated": ({"content": photo[: len(photo) // 2], "headers": jpeg}, 422, "truncated"),
        "empty body": ({"content": b"", "headers": jpeg}, 400, "empty"),
        "wrong content type": (
            {"content": photo, "headers": {"Content-Type": "application/json"}},
            415,
            "Content-Type 'application/json'",
        ),
        "body over the limit": ({"content": b"\0" * (MB + 1), "headers": jpeg}, 413, "1 MB"),
        "bomb 30000x30000": (
            {"content": claimed_png(tmp_path_factory, 30_000, 30_000), "headers": png},
            413,
            "pixels",
        ),
        "over the pixel limit": (
            {"content": claimed_png(tmp_path_factory, 5_000, 5_000), "headers": png},
            413,
            "10 MP limit",
        ),
        "too small": ({"content": encoded(astronaut()[:8, :8]), "headers": png}, 422, "small"),
        "form without the field": ({"files": {"photo": ("a.jpg", photo)}}, 422, "no field"),
        "empty form field": ({"files": {"image": ("a.jpg", b"")}}, 400, "empty"),
        "form without boundary": (
            {"content": photo, "headers": {"Content-Type": "multipart/form-data"}},
            400,
            "boundary",
        ),
        "cut-off form": (
            {
                "content": b"--xyz\r\nContent-Disposition: form-data; name=image\r\n\r\n" + photo,
                "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
            },
            400,
            "closing boundary",
        ),
    }


def check_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert fragment in detail
    assert "Traceback" not in response.text


# ------------------------------------------------------------------ the app in this process


@pytest.fixture(scope="module")
def recognizer() -> EmotionRecognizer:
    # A fresh small network (the checkpoint path is the server tests'), and detector=none (the
    # whole image is one face): no worker process, quick.
    torch.manual_seed(0)
    classifier = TorchClassifier(
        create_model(SMALL_ARCH), "cpu", "fp32", SMALL_INPUT, fold_batchnorm=False
    )
    return EmotionRecognizer(classifier, detector="none")


@pytest.fixture(scope="module")
def client(recognizer):
    app = create_app(recognizer, Limits(max_body_bytes=MB, max_pixels=10_000_000))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def test_every_bad_request_gets_a_json_error_with_its_status(client, photo, tmp_path_factory):
    for name, (request, status, fragment) in error_cases(photo, tmp_path_factory).items():
        response = client.post("/v1/predict", **request)
        try:
            check_error(response, status, fragment)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None
    # Streamed (chunked, no Content-Length) past the limit: refused while reading.
    chunks = (b"\0" * 65536 for _ in range(32))
    response = client.post("/v1/predict", content=chunks, headers={"Content-Type": "image/png"})
    check_error(response, 413, "1 MB")
    check_error(client.get("/nowhere"), 404, "Not Found")
    # And the service still works after all of them.
    response = client.post("/v1/predict", files={"image": ("photo.jpg", photo)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"], len(body["faces"])) == (320, 320, 1)
    assert set(body["faces"][0]) == FACE_KEYS


@pytest.mark.slow
def test_a_session_keeps_track_ids_across_frames_and_ends_on_request(client, photo):
    """The web page's webcam mode: frames sent with ?session= get track ids and smoothed
    probabilities kept per session; without it nothing changes; DELETE forgets the session."""

    def send(session: str | None = None, image: bytes = photo) -> httpx.Response:
        params = {} if session is None else {"session": session}
        return client.post("/v1/predict", params=params, files={"image": ("f.jpg", image)})

    first = [send("page-a").json()["faces"][0] for _ in range(3)]
    assert [face["track_id"] for face in first] == [1, 1, 1]
    assert set(first[0]) == FACE_KEYS | {"track_id", "smoothed_label", "smoothed_probs"}
    assert first[0]["smoothed_probs"] == pytest.approx(first[0]["probs"], abs=1e-6)
    assert client.get("/healthz").json()["track_sessions"] >= 1
    # Another page: its own tracks and smoothing, from a different picture.
    flipped = encoded(astronaut()[:, ::-1].copy(), ".jpg")
    other = send("page-b", flipped).json()["faces"][0]
    assert other["track_id"] == 1
    assert other["smoothed_probs"] == pytest.approx(other["probs"], abs=1e-6)
    assert set(send().json()["faces"][0]) == FACE_KEYS  # no session: as before
    assert client.delete("/v1/sessions/page-a").status_code == 204
    assert client.delete("/v1/sessions/page-a").status_code == 204  # already gone: fine
    check_error(send("../etc"), 422, "session")
    check_error(client.delete("/v1/sessions/a%20b"), 422, "session")


def test_pages_labels_health_and_openapi(client, recognizer):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="result"' in page.text and "getUserMedia" in page.text
    assert "<script src" not in page.text  # no external scripts
    assert client.get("/v1/labels").json() == {"labels": list(recognizer.labels)}
    health = client.get("/healthz").json()
    assert health["model_loaded"] is True
    assert (health["device"], health["precision"], health["detector"]) == ("cpu", "fp32", "none")
    assert client.get("/docs").status_code == 200
    body = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]
    assert {"multipart/form-data", "image/*"} <= set(body["content"])


def test_an_internal_failure_is_a_json_500_without_traceback(recognizer, photo):
    broken = EmotionRecognizer(recognizer.classifier, detector="none")

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    broken.recognize = fail
    with TestClient(create_app(broken), raise_server_exceptions=False) as client:
        response = client.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 500
        assert response.json() == {"detail": "Internal error (RuntimeError); see the server's log."}
        # The batcher survives: the next request is answered too (with the same error).
        again = client.post("/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"})
        assert again.status_code == 500


def asgi_post(app, receive) -> asyncio.Future:
    """POST /v1/predict straight to the ASGI app; the future's result is what it sent."""
    sent: list[dict] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predict",
        "raw_path": b"/v1/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"image/jpeg"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def send(message: dict) -> None:
        sent.append(message)

    async def call() -> list[dict]:
        await app(scope, receive, send)
        return sent

    return asyncio.ensure_future(call())


def status_and_detail(sent: list[dict]) -> tuple[int, str]:
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)["detail"]


def test_a_body_that_never_comes_gets_408_and_requests_beyond_the_limit_503(recognizer):
    app = create_app(recognizer, Limits(body_timeout_s=1.0, max_requests=1))

    async def never() -> dict:
        await asyncio.sleep(3600)
        return {}

    async def main():
        stalled = asgi_post(app, never)
        await asyncio.sleep(0.1)  # the stalled request is in flight: the next one is refused
        refused = await asyncio.wait_for(asgi_post(app, never), 10)
        return status_and_detail(refused), status_and_detail(await asyncio.wait_for(stalled, 10))

    refused, timed_out = asyncio.run(main())
    assert refused[0] == 503 and "busy" in refused[1]
    assert timed_out == (408, "The request body did not arrive within 1 s.")


def test_the_command_listens_on_localhost_unless_told_and_checks_its_numbers():
    config = ServeConfig.from_hydra(compose_config("serve", ["ckpt_path=best.ckpt"]))
    assert (config.host, config.port, config.detector) == ("127.0.0.1", 8000, "auto")
    assert (config.max_body_mb, config.ckpt_path) == (20, "best.ckpt")
    for bad, message in [("max_batch=0", "at least 1"), ("port=http", "expected a number")]:
        with pytest.raises(UserError, match=message):
            ServeConfig.from_hydra(compose_config("serve", ["ckpt_path=a.ckpt", bad]))


# ------------------------------------------------------------------ a real server process


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    detector = installed_detector()
    overrides = [f"detector={detector}", "max_body_mb=1", "max_pixels=10000000"]
    overrides.append("body_timeout_s=2")
    if detector != "yunet":
        # dlib holds the GIL, so its detections finish one at a time and batches form only
        # with a window longer than a detection (yunet's worker processes run in parallel).
        overrides.append("batch_window_ms=500")
    with running_server(checkpoint, log, *overrides, "access_log=false") as server:
        yield server
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_faces_on_the_photo_and_the_mosaic(server, photo, mosaic_jpeg):
    labels = httpx.get(f"{server.url}/v1/labels").json()["labels"]
    one = httpx.post(f"{server.url}/v1/predict", files={"image": ("photo.jpg", photo)}, timeout=60)
    assert one.status_code == 200, one.text
    assert one.json()["width"] == 320 and len(one.json()["faces"]) == 1
    raw = {"Content-Type": "image/jpeg"}
    four = httpx.post(f"{server.url}/v1/predict", content=mosaic_jpeg, headers=raw, timeout=60)
    assert four.status_code == 200, four.text
    body = four.json()
    assert (body["width"], body["height"], len(body["faces"])) == (640, 640, 4)
    quadrants = set()
    for face in [*one.json()["faces"], *body["faces"]]:
        assert set(face) == FACE_KEYS
        assert face["label"] == max(face["probs"], key=face["probs"].get)
        assert list(face["probs"]) == labels
        assert sum(face["probs"].values()) == pytest.approx(1, abs=1e-4)
    for face in body["faces"]:
        x0, y0, x1, y1 = face["box"]
        quadrants.add(((x0 + x1) // 2 // 320, (y0 + y1) // 2 // 320))
    assert quadrants == {(0, 0), (0, 1), (1, 0), (1, 1)}


@pytest.mark.slow
def test_errors_over_the_wire(server, photo, tmp_path_factory):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for name, (request, status, fragment) in error_cases(photo, tmp_path_factory).items():
            try:
                check_error(client.post("/v1/predict", **request), status, fragment)
            except AssertionError as error:
                raise AssertionError(f"{name}: {error}") from None
        chunks = (b"\0" * 65536 for _ in range(64))
        response = client.post("/v1/predict", content=chunks, headers={"Content-Type": "image/png"})
        check_error(response, 413, "1 MB")
    # A declared length over the limit is answered before any of the body is sent.
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 500000000\r\n\r\n"
        )
        head = raw.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head
    # A client that stops sending its body is answered 408 after body_timeout_s.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 1000\r\n\r\n" + photo[:10]
        )
        head = raw.recv(65536)
    assert head.startswith(b"HTTP/1.1 408"), head
    # No worker is left hanging: the photo is still answered.
    response = httpx.post(f"{server.url}/v1/predict", files={"image": ("p.jpg", photo)}, timeout=60)
    assert response.status_code == 200 and len(response.json()["faces"]) == 1


def percentiles(latencies: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return cuts[49], cuts[94]


async def timed_posts(
    url: str, payloads: list[tuple[bytes, int]], concurrency: int
) -> tuple[float, list[float]]:
    """Wall time and per-request latencies of posting ``payloads`` with at most
    ``concurrency`` requests in flight; every answer is checked (200, its face count)."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def post(payload: bytes, faces: int) -> float:
            async with gate:
                started = time.perf_counter()
                response = await client.post(
                    "/v1/predict", content=payload, headers={"Content-Type": "image/jpeg"}
                )
                elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.text
            assert len(response.json()["faces"]) == faces
            return elapsed

        started = time.perf_counter()
        latencies = list(await asyncio.gather(*(post(*p) for p in payloads)))
        return time.perf_counter() - started, latencies


@pytest.mark.slow
def test_200_concurrent_requests_are_all_answered_and_batched(server, photo, mosaic_jpeg):
    """All 200 answered correctly; the faces of concurrent requests share network calls.
    Throughput and latency are printed (they depend on the machine; not asserted)."""
    payloads = [(photo, 1) if i % 2 == 0 else (mosaic_jpeg, 4) for i in range(200)]
    before = server.healthz()["batching"]
    sequential_s, sequential = asyncio.run(timed_posts(server.url, payloads[:40], 1))
    after_sequential = server.healthz()["batching"]
    concurrent_s, concurrent = asyncio.run(timed_posts(server.url, payloads, 32))
    after = server.healthz()["batching"]

    assert after_sequential["calls_with_several_requests"] == before["calls_with_several_requests"]
    assert after["requests"] - after_sequential["requests"] == 200
    assert after["calls_with_several_requests"] > after_sequential["calls_with_several_requests"]
    assert after["largest_requests"] > 1
    calls = after["calls"] - after_sequential["calls"]
    print(
        f"\nfer-serve, resnet18 at 64 px, detector {server.healthz()['detector']}, "
        f"{after['faces'] - after_sequential['faces']} faces: "
        f"sequential {len(sequential)} requests: {len(sequential) / sequential_s:.1f} req/s, "
        "p50 {:.0f} ms, p95 {:.0f} ms; ".format(*(1000 * v for v in percentiles(sequential)))
        + f"200 concurrent (32 in flight): {200 / concurrent_s:.1f} req/s, "
        "p50 {:.0f} ms, p95 {:.0f} ms; ".format(*(1000 * v for v in percentiles(concurrent)))
        + f"{calls} network calls for 200 requests, largest {after['largest_requests']} "
        f"requests / {after['largest_faces']} faces"
    )


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish_and_refuses_new_ones(
    checkpoint, photo, tmp_path
):
    overrides = [f"detector={installed_detector()}", "access_log=false"]
    with running_server(checkpoint, tmp_path / "server.log", *overrides) as server:
        port = int(server.url.rsplit(":", 1)[1])
        in_flight = socket.create_connection(("127.0.0.1", port), timeout=60)
        head = (
            "POST /v1/predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(photo)}\r\n\r\n"
        )
        in_flight.sendall(head.encode() + photo[:1000])
        time.sleep(0.5)  # the server is now reading this request's body
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        refused = False
        while not refused and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                time.sleep(0.05)
            except ConnectionRefusedError:
                refused = True
        assert refused, "new connections are still accepted 30 s after SIGTERM"
        in_flight.sendall(photo[1000:])
        answer = b""
        while chunk := in_flight.recv(65536):
            answer += chunk
        in_flight.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert answer.count(b'"label"') == 1
        try:
            status = server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fer-serve still runs 60 s after SIGTERM:\n{server.log()}")
        assert status == 0, server.log()
        assert "fer-serve: stopped (SIGTERM)." in server.log()
        assert "Traceback" not in server.log()
