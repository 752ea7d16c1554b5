"""The service's batcher: concurrent requests share network calls, a lone request does not wait,
errors and shutdown reach every waiting request, and results go back to their own request."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fer_lightning.faces.detectors import Detection
from fer_lightning.inference.recognizer import FacePrediction
from fer_lightning.serve.batcher import BatcherStoppedError, FaceBatcher

# Far longer than any test runs: reaching it would fail the test's own timeout.
LONG_WINDOW_S = 60.0
TIMEOUT_S = 20.0


class FakeNetwork:
    """recognizer.recognize stand-in: records each call; a face's label names its image."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.fail = fail

    def __call__(self, images, detections):
        self.calls.append(len(images))
        if self.fail:
            raise RuntimeError("network down")
        return [
            [FacePrediction(d.box, d.score, f"image{int(image[0, 0, 0])}", {}) for d in found]
            for image, found in zip(images, detections, strict=True)
        ]


def image(number: int) -> np.ndarray:
    return np.full((4, 4, 3), number, np.uint8)


def faces(count: int) -> list[Detection]:
    return [Detection((i, i, i + 1, i + 1), 0.9) for i in range(count)]


async def request(batcher: FaceBatcher, number: int, face_count: int = 1, delay: float = 0):
    with batcher.incoming() as slot:
        await asyncio.sleep(delay)  # decoding and detection
        return await slot.recognize(image(number), faces(face_count))


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT_S))


def test_concurrent_requests_share_one_network_call_and_get_their_own_faces():
    network = FakeNetwork()

    async def main():
        batcher = FaceBatcher(network, window_s=LONG_WINDOW_S, max_faces=32)
        await batcher.start()
        results = await asyncio.gather(
            *(request(batcher, n, face_count=n, delay=0.01 * n) for n in range(1, 6))
        )
        await batcher.stop()
        return results, batcher.stats

    results, stats = run(main())
    # The batch waited for the requests still on their way, then left without the window.
    assert network.calls == [5]
    assert [len(r) for r in results] == [1, 2, 3, 4, 5]
    assert all(face.label == f"image{n}" for n, r in enumerate(results, 1) for face in r)
    assert (stats.calls, stats.requests, stats.faces, stats.largest_requests) == (1, 5, 15, 5)


def test_a_lone_request_or_one_without_faces_does_not_wait_for_the_window():
    network = FakeNetwork()

    async def main():
        batcher = FaceBatcher(network, window_s=LONG_WINDOW_S)
        await batcher.start()
        alone = await request(batcher, 1)
        with batcher.incoming():  # announced, then fails (a bad image): withdrawn
            pass
        with batcher.incoming() as empty:
            none = await empty.recognize(image(2), [])
        again = await request(batcher, 3)
        await batcher.stop()
        return alone, none, again

    alone, none, again = run(main())
    assert [f.label for f in alone] == ["image1"] and none == [] and len(again) == 1
    assert network.calls == [1, 1]


def test_max_faces_splits_a_batch():
    network = FakeNetwork()

    async def main():
        batcher = FaceBatcher(network, window_s=LONG_WINDOW_S, max_faces=4)
        await batcher.start()
        await asyncio.gather(*(request(batcher, n, face_count=2) for n in range(3)))
        await batcher.stop()

    run(main())
    assert network.calls == [2, 1]


def test_a_network_error_reaches_every_request_of_the_batch_and_the_batcher_goes_on():
    network = FakeNetwork(fail=True)

    async def main():
        batcher = FaceBatcher(network, window_s=LONG_WINDOW_S)
        await batcher.start()
        failed = await asyncio.gather(
            *(request(batcher, n) for n in range(3)), return_exceptions=True
        )
        network.fail = False
        after = await request(batcher, 7)
        await batcher.stop()
        return failed, after

    failed, after = run(main())
    assert [str(error) for error in failed] == ["network down"] * 3
    assert [f.label for f in after] == ["image7"]


def test_stopping_fails_waiting_requests_and_refuses_new_ones():
    async def main():
        batcher = FaceBatcher(FakeNetwork(), window_s=LONG_WINDOW_S)
        await batcher.start()
        with batcher.incoming():  # keeps the batch waiting
            waiting = asyncio.ensure_future(batcher.recognize(image(1), faces(1)))
            await asyncio.sleep(0.05)
            await batcher.stop()
            with pytest.raises(BatcherStoppedError):
                await waiting
        with pytest.raises(BatcherStoppedError):
            await batcher.recognize(image(2), faces(1))

    run(main())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="batch size"):
        FaceBatcher(FakeNetwork(), max_faces=0)
