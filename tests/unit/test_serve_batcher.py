"""The service's batcher: concurrent requests share network calls, a lone request does not wait,
errors and shutdown reach every waiting request, and results go back to their own request."""

from __future__ import annotations

import asyncio
import time

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

    def __init__(self, fail: bool = False, seconds: float = 0.0) -> None:
        self.calls: list[int] = []
        self.fail = fail
        self.seconds = seconds  # how long a call takes

    def __call__(self, images, detections):
        self.calls.append(len(images))
        time.sleep(self.seconds)
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


async def requests_around_a_slow_call(batcher: FaceBatcher, late_by: float) -> None:
    """Request 1 runs alone; during its call request 2 arrives and request 3 is announced,
    its faces arriving ``late_by`` seconds after the network is free again."""
    first = asyncio.ensure_future(request(batcher, 1))
    await asyncio.sleep(0.05)  # the network runs request 1 (0.2 s)
    await asyncio.gather(first, request(batcher, 2), request(batcher, 3, delay=0.15 + late_by))


@pytest.mark.parametrize(("late_by", "calls"), [(0.05, [1, 2]), (0.5, [1, 1, 1])])
def test_after_a_call_faces_wait_for_announced_ones_up_to_a_short_calls_time(late_by, calls):
    """With a network slower than the window, the faces waiting when a call ends wait for
    the requests still being detected (instead of running a small call of their own), up to
    the shortest recent call's time (0.2 s here), not longer."""
    network = FakeNetwork(seconds=0.2)

    async def main():
        batcher = FaceBatcher(network, window_s=0.01, max_faces=32)
        await batcher.start()
        await requests_around_a_slow_call(batcher, late_by)
        wait_s = batcher.wait_s
        await batcher.stop()
        return wait_s

    wait_s = run(main())
    assert network.calls == calls
    assert 0.2 <= wait_s < 0.4


def test_faces_queued_during_a_call_wait_for_the_next_request_of_the_client_it_answered():
    """A client that sends again on its answer joins the faces that queued meanwhile, instead
    of those leaving alone a moment before it is announced."""
    network = FakeNetwork(seconds=0.2)

    async def main():
        batcher = FaceBatcher(network, window_s=0.01, max_faces=32)
        batcher.record_call(1, 0.2)  # as the server's warm-up does
        await batcher.start()

        async def client() -> None:
            await request(batcher, 1)
            await asyncio.sleep(0.01)  # the answer travels, the next request comes
            await request(batcher, 2, delay=0.02)

        async def queued() -> None:
            await asyncio.sleep(0.05)  # arrives while the network runs the client's face
            await request(batcher, 3)

        await asyncio.gather(client(), queued())
        await batcher.stop()

    run(main())
    assert network.calls == [1, 2]


def test_max_faces_splits_a_batch():
    network = FakeNetwork()

    async def main():
        batcher = FaceBatcher(network, window_s=0.05, max_faces=4)
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
