"""The web page in a real headless browser: Debian's Chromium and chromedriver, driven by
Selenium (nothing downloaded), against a real ``fer-serve`` process. It uploads the bundled
photo and checks that the face's box and label tag are drawn on the canvas; the screenshot is
kept as a test artefact (``outputs/test-artifacts/serve_page.png``, git-ignored). A model
trained on synthetic faces gets a warning banner; others none."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fer_lightning.inference.samples import ASTRONAUT_PATH
from tests.helpers.inference import installed_detector, save_lightning_checkpoint
from tests.helpers.serve import PROJECT_ROOT, running_server, small_app_server

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACT_DIR = PROJECT_ROOT / "outputs" / "test-artifacts"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,1100",
)
ANSWER_TIMEOUT_S = 120


@contextlib.contextmanager
def chromium(profile: Path, *extra_flags: str) -> Iterator[object]:
    """A headless Chromium session with a fresh profile, through the distribution's driver."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            f"Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}): "
            "apt-get install -y chromium chromium-driver"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # The driver path is given, so Selenium Manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def rgb(color: str) -> list[int]:
    return [int(color[i : i + 2], 16) for i in (1, 3, 5)]


PIXEL_JS = """
const data = document.getElementById('view').getContext('2d')
  .getImageData(arguments[0], arguments[1], 1, 1).data;
return [data[0], data[1], data[2]];
"""


def test_the_page_draws_the_face_and_label_of_an_uploaded_photo(tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")
    checkpoint = save_lightning_checkpoint(tmp_path / "small.ckpt")
    overrides = [f"detector={installed_detector()}", "access_log=false"]
    with (
        chromium(tmp_path / "profile") as driver,
        running_server(checkpoint, tmp_path / "server.log", *overrides) as server,
    ):
        driver.get(f"{server.url}/")
        assert "emotion" in driver.title
        banner = driver.find_element(By.ID, "model-warning")
        WebDriverWait(driver, 30).until(lambda _: banner.get_attribute("data-checked") == "true")
        assert not banner.is_displayed()  # a model not trained on synthetic faces: no banner
        calibration = driver.find_element(By.ID, "calibration")
        assert calibration.get_attribute("data-applied") == "false"
        assert "no fitted temperature" in calibration.text
        driver.find_element(By.ID, "photo").send_keys(str(ASTRONAUT_PATH))
        result = driver.find_element(By.ID, "result")
        WebDriverWait(driver, ANSWER_TIMEOUT_S).until(
            lambda _: result.get_attribute("data-state") in ("done", "error")
        )
        screenshot = tmp_path / "serve_page.png"
        driver.save_screenshot(str(screenshot))
        ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, ARTIFACT_DIR / "serve_page.png")

        assert result.get_attribute("data-state") == "done", result.text
        body = json.loads(result.text)
        assert result.get_attribute("data-faces") == "1"
        (face,) = body["faces"]
        assert result.get_attribute("data-labels") == face["label"]
        assert "ms round trip" in driver.find_element(By.ID, "latency").text
        canvas = driver.find_element(By.ID, "view")
        assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == ("320", "320")
        (drawn,) = json.loads(canvas.get_attribute("data-boxes"))
        assert (drawn["box"], drawn["label"]) == (face["box"], face["label"])
        # The pixels themselves: the box's top edge and the label tag have the box's colour.
        x0, y0, x1, _ = face["box"]
        tag_left, tag_top, _, _ = drawn["tag"]
        for x, y in [((x0 + x1) // 2, y0), (int(tag_left) + 2, int(tag_top) + 2)]:
            pixel = driver.execute_script(PIXEL_JS, x, y)
            assert pixel == pytest.approx(rgb(drawn["color"]), abs=3), (x, y, pixel)
        assert "Traceback" not in server.log()


def test_the_page_warns_above_everything_when_the_model_learned_from_synthetic_faces(
    tmp_path, monkeypatch
):
    """A model trained on the project's synthetic demo faces: the page shows /healthz's
    warning in a banner before any photo is sent, and says that its scores are calibrated."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")
    with (
        chromium(tmp_path / "profile") as driver,
        small_app_server(tmp_path, synthetic=1, temperature=1.75) as (_, port),
    ):
        url = f"http://127.0.0.1:{port}"
        warning = httpx.get(f"{url}/healthz", timeout=30).json()["warning"]
        assert "synthetic demo faces" in warning
        driver.get(f"{url}/")
        banner = driver.find_element(By.ID, "model-warning")
        WebDriverWait(driver, 30).until(lambda _: banner.get_attribute("data-checked") == "true")
        assert banner.is_displayed()
        assert banner.text == warning
        # What a score means, from /healthz: this model's temperature is applied.
        calibration = driver.find_element(By.ID, "calibration")
        assert calibration.get_attribute("data-applied") == "true"
        assert "calibrated: temperature 1.750, fitted on 420 validation faces" in calibration.text


def test_the_webcam_keeps_face_ids_across_frames_and_ends_its_session(tmp_path, monkeypatch):
    """Chromium's fake camera (a moving test pattern) with detector none (the whole frame is one
    face): every frame's face is #1 (tracked in the page's session on the server), and stopping
    the webcam ends the session there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")
    fake_camera = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
    with (
        chromium(tmp_path / "profile", *fake_camera) as driver,
        small_app_server(tmp_path) as (_, port),
    ):
        url = f"http://127.0.0.1:{port}"
        driver.get(f"{url}/")
        driver.find_element(By.ID, "webcam").click()
        result = driver.find_element(By.ID, "result")
        seen: list[dict] = []

        def three_frames(_) -> bool:
            # One read of the page's state: read one by one, the boxes of one frame could be
            # paired with the next frame's latency line.
            state, boxes, latency = driver.execute_script(
                "return [document.getElementById('result').dataset.state,"
                " document.getElementById('view').dataset.boxes,"
                " document.getElementById('latency').textContent];"
            )
            if state == "error":
                raise AssertionError(result.text)
            done = "frames/s" in latency  # written after a webcam frame's answer is drawn
            if done and boxes and latency not in [s["latency"] for s in seen]:
                seen.append({"latency": latency, "boxes": json.loads(boxes)})
            return len(seen) >= 3

        WebDriverWait(driver, ANSWER_TIMEOUT_S, poll_frequency=0.05).until(three_frames)
        assert all([b["trackId"] for b in s["boxes"]] == [1] for s in seen), seen
        body = json.loads(result.text)
        assert body["faces"][0]["track_id"] == 1 and "smoothed_probs" in body["faces"][0]
        assert httpx.get(f"{url}/healthz", timeout=30).json()["track_sessions"] == 1
        # Stopped and started again at once, while a frame is in flight: one loop, one session
        # (the old loop must not go on beside the new one with its ended session).
        driver.execute_script("const b = document.getElementById('webcam'); b.click(); b.click();")
        seen.clear()
        WebDriverWait(driver, ANSWER_TIMEOUT_S, poll_frequency=0.05).until(three_frames)
        # The old loop ends its session once its frame's answer is back (a moment later).
        WebDriverWait(driver, 30).until(
            lambda _: httpx.get(f"{url}/healthz", timeout=30).json()["track_sessions"] == 1
        )
        seen.clear()
        WebDriverWait(driver, ANSWER_TIMEOUT_S, poll_frequency=0.05).until(three_frames)
        assert httpx.get(f"{url}/healthz", timeout=30).json()["track_sessions"] == 1
        driver.find_element(By.ID, "webcam").click()  # stop
        WebDriverWait(driver, 30).until(
            lambda _: httpx.get(f"{url}/healthz", timeout=30).json()["track_sessions"] == 0
        )


COLOURED_JS = """
const view = document.getElementById('view');
const data = view.getContext('2d').getImageData(0, 0, view.width, view.height).data;
let coloured = 0;
for (let i = 0; i < data.length; i += 4) {
  const spread = Math.max(data[i], data[i + 1], data[i + 2])
    - Math.min(data[i], data[i + 1], data[i + 2]);
  if (spread > 40) coloured += 1;
}
return coloured;
"""


def test_the_toggle_draws_where_the_network_looked_over_the_face(tmp_path, monkeypatch):
    """A gray synthetic face (detector none: the whole image is the face) sent with the toggle
    on: the page asks /v1/explain and paints the map's colours over the face, its peak inside
    the face's box; toggled off, the same photo comes back gray but for the box and bars."""
    import cv2
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from fer_lightning.data.synthetic import draw_face

    monkeypatch.setenv("SE_OFFLINE", "true")
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.resize(draw_face(3, np.random.default_rng(0)), (400, 300)))
    with (
        chromium(tmp_path / "profile") as driver,
        small_app_server(tmp_path) as (_, port),
    ):
        driver.get(f"http://127.0.0.1:{port}/")
        result = driver.find_element(By.ID, "result")
        canvas = driver.find_element(By.ID, "view")
        toggle = driver.find_element(By.ID, "explain")

        def answered(state: str) -> None:
            WebDriverWait(driver, ANSWER_TIMEOUT_S).until(
                lambda _: result.get_attribute("data-state") == state
            )

        toggle.click()
        driver.find_element(By.ID, "photo").send_keys(str(photo))
        answered("done")
        body = json.loads(result.text)
        (face,) = body["faces"]
        assert len(face["maps"]["gradcam"]) == 48
        (drawn,) = json.loads(canvas.get_attribute("data-maps"))
        # The page laid the map's peak where the crop's matrix says it is in the image.
        values = np.array(face["maps"]["gradcam"])
        v, u = np.unravel_index(np.argmax(values), values.shape)
        matrix = np.array(face["crop_matrix"])
        expected = np.linalg.solve(matrix[:, :2], np.array([u, v]) - matrix[:, 2])
        np.testing.assert_allclose(drawn["peak"], expected, atol=1e-3)
        # Nearest the peak inside the photo, the map's colours are drawn over the gray face.
        x = int(np.clip(round(expected[0]), 0, 399))
        y = int(np.clip(round(expected[1]), 0, 299))
        r, g, b = driver.execute_script(PIXEL_JS, x, y)
        assert max(r, g, b) - min(r, g, b) > 40, (x, y, r, g, b)
        with_map = driver.execute_script(COLOURED_JS)
        driver.save_screenshot(str(tmp_path / "serve_explain.png"))
        ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "serve_explain.png", ARTIFACT_DIR / "serve_explain.png")

        driver.execute_script("document.getElementById('result').dataset.state = 'waiting';")
        toggle.click()  # off: the same photo again, through /v1/predict
        answered("done")
        assert "maps" not in json.loads(result.text)["faces"][0]
        assert json.loads(canvas.get_attribute("data-maps")) == []
        without_map = driver.execute_script(COLOURED_JS)
        assert with_map > without_map + 0.2 * 400 * 300, (with_map, without_map)
