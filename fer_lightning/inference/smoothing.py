"""Per-track smoothing of emotion probabilities over time, so that labels stop flickering.

``smoothing`` selects the filter, applied to each track on its own (a person's past never
mixes with another's):

- ``0``: off; the smoothed probabilities are the raw ones.
- a number in (0, 1): an exponential average, ``s = smoothing * s + (1 - smoothing) * p``
  (the weight kept from the past; 0.7 follows a change within about 3 analysed frames).
- a whole number >= 1: the mean over the track's last ``smoothing`` analysed frames (1 = off).

A track's history restarts when the track ends (:meth:`ProbabilitySmoother.forget`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike


def check_smoothing(smoothing: float) -> float:
    """``smoothing`` as a float if it is 0, in (0, 1), or a whole number >= 1; a ValueError
    naming the value otherwise."""
    if isinstance(smoothing, bool) or not isinstance(smoothing, int | float):
        raise ValueError(f"smoothing={smoothing!r}: expected a number.")
    value = float(smoothing)
    if value == 0 or 0 < value < 1 or (value >= 1 and value == int(value)):
        return value
    raise ValueError(
        f"smoothing={smoothing!r}: use 0 (off), a factor in (0, 1) (exponential average) or a "
        "whole number of frames >= 1 (moving average)."
    )


class ProbabilitySmoother:
    """Keeps one filter state per track id and smooths each new probability vector with it."""

    def __init__(self, smoothing: float = 0.0) -> None:
        self.smoothing = check_smoothing(smoothing)
        self._exponential: dict[int, np.ndarray] = {}
        self._windows: dict[int, deque[np.ndarray]] = {}

    @property
    def window(self) -> int | None:
        """The moving average's length in frames; None for the exponential average or off."""
        return int(self.smoothing) if self.smoothing >= 1 else None

    def update(self, track_id: int, probs: ArrayLike) -> np.ndarray:
        """The smoothed probabilities (C,) of track ``track_id`` after this frame's ``probs``
        (C,), which sum to 1; so do the smoothed ones."""
        probs = np.asarray(probs, dtype=float)
        if self.smoothing == 0:
            return probs.copy()
        if self.window is not None:
            history = self._windows.setdefault(track_id, deque(maxlen=self.window))
            history.append(probs)
            return np.mean(history, axis=0)
        previous = self._exponential.get(track_id)
        smoothed = (
            probs
            if previous is None
            else (self.smoothing * previous + (1 - self.smoothing) * probs)
        )
        self._exponential[track_id] = smoothed
        return smoothed.copy()

    def forget(self, keep: Iterable[int]) -> None:
        """Drop the state of every track not in ``keep`` (the tracks that ended)."""
        keep = set(keep)
        for states in (self._exponential, self._windows):
            for track_id in [t for t in states if t not in keep]:
                del states[track_id]

    def __len__(self) -> int:
        """Tracks with a state."""
        return len(self._exponential) + len(self._windows)
