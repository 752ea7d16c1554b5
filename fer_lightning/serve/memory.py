"""How many decoded pixels the server holds at once, and giving memory back after a burst.

A 7000x7000 PNG is 143 KB on the wire and 147 MB decoded (196 MB inside Pillow); without a
bound, a few such uploads at once take gigabytes. Every request reserves its decoded pixels in
one :class:`PixelBudget` before decoding (waiting, in a decoding thread, while others hold it),
keeps only its reduced working image's share once it is reduced, and releases that when it is
answered. glibc keeps freed memory in its arenas; :func:`give_back_memory` returns it to the
system (``malloc_trim``) once the server is idle after holding large images.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from functools import cache


class PixelBudget:
    """At most ``capacity`` pixels reserved at once; a reservation larger than the whole
    capacity takes the whole capacity (it waits until nothing else is held)."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"The pixel budget must be positive, got {capacity}.")
        self.capacity = int(capacity)
        self.held = 0
        self.peak = 0
        self._changed = threading.Condition()

    def acquire(self, pixels: int) -> int:
        """Block until ``pixels`` (capped at the capacity) are free; returns what was taken."""
        taken = min(int(pixels), self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self.held + taken <= self.capacity)
            self.held += taken
            self.peak = max(self.peak, self.held)
        return taken

    def release(self, pixels: int) -> None:
        with self._changed:
            self.held -= int(pixels)
            if self.held < 0:
                raise RuntimeError("More pixels released than reserved.")
            self._changed.notify_all()


@cache
def _malloc_trim() -> object | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def give_back_memory() -> bool:
    """Return the C heap's free memory to the system (glibc's ``malloc_trim(0)``); False
    where the C library has no such call (musl, macOS)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)  # type: ignore[operator]
    return True
