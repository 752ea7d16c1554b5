"""fer-serve's POST /v1/explain, in process: JSON maps over the crop with the crop's matrix in
the file's pixels, a PNG overlay on request, an unknown target refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fer_lightning.data.synthetic import draw_face
from fer_lightning.labels import EMOTIONS
from tests.helpers.serve_app import small_recognizer


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from fer_lightning.serve import create_app

    with TestClient(create_app(small_recognizer())) as client:
        yield client


@pytest.fixture(scope="module")
def png() -> bytes:
    face = cv2.resize(draw_face(3, np.random.default_rng(0)), (120, 100))
    return cv2.imencode(".png", face)[1].tobytes()


def test_explain_answers_maps_over_the_crop(client, png):
    answer = client.post("/v1/explain", content=png, headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["width"], body["height"]) == (120, 100)
    (face,) = body["faces"]
    assert set(face["probs"]) == set(EMOTIONS) and face["target"] == face["label"]
    values = np.array(face["maps"]["gradcam"])
    assert values.shape == (48, 48) and values.min() >= 0 and values.max() == pytest.approx(1)
    matrix = np.array(face["crop_matrix"])
    # The whole image is the face: its centre goes to the crop's centre.
    centre = matrix @ np.array([59.5, 49.5, 1.0])
    np.testing.assert_allclose(centre, [23.5, 23.5], atol=0.5)
    chosen = client.post(
        "/v1/explain?target=fear", content=png, headers={"content-type": "image/png"}
    )
    assert chosen.json()["faces"][0]["target"] == "fear"


def test_explain_draws_a_png_overlay_on_request(client, png):
    answer = client.post(
        "/v1/explain?format=png", content=png, headers={"content-type": "image/png"}
    )
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    overlay = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (100, 120, 3)
    assert np.abs(overlay.astype(int) - overlay.mean(axis=2, keepdims=True)).max() > 40


def test_explain_refuses_an_unknown_target(client, png):
    answer = client.post(
        "/v1/explain?target=bored", content=png, headers={"content-type": "image/png"}
    )
    assert answer.status_code == 422 and "bored" in answer.json()["detail"]
