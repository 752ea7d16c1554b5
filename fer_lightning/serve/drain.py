"""A graceful shutdown that ends every request with an answer the client can act on.

uvicorn lets requests in flight run for ``shutdown_timeout_s`` after SIGTERM and then cancels
them, which answers a plain-text 500. The server calls :meth:`DrainNotice.begin` as the
shutdown starts; a prediction still running shortly before the timeout (a slow upload, say)
is stopped by the app itself and answered with a JSON 503, so that the client sends it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

# Seconds kept back from the shutdown timeout to send the 503s before uvicorn cancels.
ANSWER_MARGIN_S = 1.0


class ServerStoppingError(Exception):
    """The server is stopping and the request could not finish in time."""


class DrainNotice:
    """Set once the server begins to stop; :meth:`run` bounds work by the time left."""

    def __init__(self) -> None:
        self._expired: asyncio.Event | None = None
        self.draining = False

    def _event(self) -> asyncio.Event:
        if self._expired is None:
            self._expired = asyncio.Event()
        return self._expired

    def begin(self, timeout_s: float) -> None:
        """The shutdown started; requests get ``timeout_s`` less a margin to finish (called
        in the event loop)."""
        if self.draining:
            return
        self.draining = True
        expired = self._event()
        grace = max(0.0, min(timeout_s - ANSWER_MARGIN_S, timeout_s / 2))
        asyncio.get_running_loop().call_later(grace, expired.set)

    async def run(self, work: Awaitable[T]) -> T:
        """``work``'s result, or :class:`ServerStoppingError` (the work cancelled) when the
        shutdown's grace runs out first."""
        task = asyncio.ensure_future(work)
        expired = asyncio.ensure_future(self._event().wait())
        try:
            await asyncio.wait({task, expired}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            raise ServerStoppingError(
                "The server is shutting down and this request could not finish in time; "
                "send it again."
            )
        finally:
            for pending in (task, expired):
                if not pending.done():
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pending
