"""Face tracks across the frames a web page sends: one :class:`FaceTracks` per page session.

The page's webcam mode sends ``/v1/predict?session=<id>`` with each frame; the faces of that
session's frames get their ``track_id`` and smoothed probabilities as in a video. The state is
bounded: at most ``max_sessions`` sessions (the least recently used one is dropped first), each
dropped after ``idle_s`` seconds without a frame, or at once when the page ends it
(``DELETE /v1/sessions/<id>``). It lives in the server's memory only.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable

from fer_lightning.inference.people import FaceTracks, TrackingOptions

# A session id: what crypto.randomUUID() gives, or any short token of these characters.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class InvalidSessionError(ValueError):
    """A session id that is not 1-64 letters, digits, ``-`` or ``_``."""


class TrackSessions:
    """Session id -> its :class:`FaceTracks`, least recently used first."""

    def __init__(
        self,
        tracking: TrackingOptions | None = None,
        max_sessions: int = 64,
        idle_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_sessions < 1 or idle_s <= 0:
            raise ValueError(f"max_sessions={max_sessions} and idle_s={idle_s} must be positive.")
        self.tracking = tracking or TrackingOptions()
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self._clock = clock
        self._sessions: OrderedDict[str, tuple[FaceTracks, float]] = OrderedDict()

    @staticmethod
    def check(session: str) -> str:
        """``session`` if it is a valid id; :class:`InvalidSessionError` naming it otherwise."""
        if not SESSION_ID.fullmatch(session):
            shown = session if len(session) <= 70 else session[:67] + "..."
            raise InvalidSessionError(
                f"session={shown!r}: a session id is 1-64 letters, digits, '-' or '_'."
            )
        return session

    def tracks(self, session: str) -> FaceTracks:
        """The tracks of ``session``, new if it has none (or they were dropped)."""
        self.check(session)
        now = self._clock()
        self._expire(now)
        entry = self._sessions.pop(session, None)
        people = entry[0] if entry is not None else self.tracking.tracker()
        self._sessions[session] = (people, now)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return people

    def end(self, session: str) -> bool:
        """Drop ``session``'s state; whether it had any."""
        self.check(session)
        return self._sessions.pop(session, None) is not None

    def _expire(self, now: float) -> None:
        while self._sessions:
            oldest, (_, last_used) = next(iter(self._sessions.items()))
            if now - last_used <= self.idle_s:
                break
            del self._sessions[oldest]

    def __len__(self) -> int:
        self._expire(self._clock())
        return len(self._sessions)
