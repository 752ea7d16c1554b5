"""The web page's track sessions: bounded, dropped when idle or ended, never shared."""

from __future__ import annotations

import pytest

from fer_lightning.inference.people import TrackingOptions
from fer_lightning.inference.predictions import FacePrediction
from fer_lightning.serve.sessions import InvalidSessionError, TrackSessions


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def face(**probs) -> FacePrediction:
    return FacePrediction((0, 0, 50, 50), 0.9, max(probs, key=probs.get), probs)


def test_each_session_keeps_its_own_tracks_and_smoothing():
    sessions = TrackSessions(TrackingOptions(smoothing=0.9))
    for _ in range(5):
        (happy,) = sessions.tracks("a").update([face(happy=0.9, sad=0.1)])
    (sad,) = sessions.tracks("b").update([face(happy=0.1, sad=0.9)])
    assert (happy.track_id, sad.track_id) == (1, 1)
    assert sad.smoothed_probs == pytest.approx(sad.probs)  # nothing of session a
    (again,) = sessions.tracks("a").update([face(happy=0.1, sad=0.9)])
    assert again.track_id == 1 and again.smoothed_label == "happy"  # a's own past
    assert len(sessions) == 2


def test_sessions_are_bounded_dropped_when_idle_and_when_ended():
    clock = Clock()
    sessions = TrackSessions(max_sessions=2, idle_s=10, clock=clock)
    first = sessions.tracks("a")
    sessions.tracks("b")
    assert sessions.tracks("a") is first  # a is now the most recently used
    sessions.tracks("c")  # over the bound: b, the least recently used, goes
    assert len(sessions) == 2 and sessions.tracks("a") is first
    clock.now = 6
    sessions.tracks("c")
    clock.now = 12  # a was last used 12 s ago (more than idle_s), c 6 s ago
    assert len(sessions) == 1
    assert sessions.tracks("a") is not first


def test_ending_a_session_forgets_it():
    sessions = TrackSessions()
    first = sessions.tracks("a")
    assert sessions.end("a") is True and sessions.end("a") is False
    assert sessions.tracks("a") is not first


@pytest.mark.parametrize("session", ["", "a" * 65, "a b", "../x", "é"])
def test_bad_session_ids_are_refused_by_name(session):
    with pytest.raises(InvalidSessionError, match="session="):
        TrackSessions().tracks(session)
