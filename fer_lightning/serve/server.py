"""Running the app under uvicorn with limits on connections, not only on requests.

uvicorn by itself keeps a connection that sends nothing (or half a header) open forever and
accepts connections until the process runs out of file descriptors; asyncio then logs a
traceback for every failed ``accept``. Here:

- :class:`GuardedH11Protocol` closes a connection whose request headers are not complete
  ``header_timeout_s`` after it opened or after its previous response (408 when part of a
  request arrived; nginx's ``client_header_timeout``), and answers a connection beyond
  ``max_connections`` with a JSON 503 at once, closing it;
- idle keep-alive connections close after ``keep_alive_s`` (uvicorn's ``timeout_keep_alive``);
- running out of file descriptors is logged once (and its end once), not per ``accept``;
- on SIGTERM the app is told first (:meth:`DrainNotice.begin`), so that requests still
  uploading get a JSON 503 before uvicorn's shutdown timeout would cut them with a plain 500.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

# File descriptors kept free for what the server opens besides connections (model files,
# detector pipes, logs).
RESERVED_DESCRIPTORS = 64
# accept() errors that mean "out of a system resource" (asyncio then pauses accepting 1 s).
EXHAUSTION_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class ConnectionLimits:
    """``header_timeout_s`` for a request's headers to arrive, ``keep_alive_s`` for an idle
    kept-alive connection, at most ``max_connections`` open connections (503 beyond)."""

    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 1000

    def __post_init__(self) -> None:
        if min(self.header_timeout_s, self.keep_alive_s, self.max_connections) <= 0:
            raise ValueError(f"Every connection limit must be positive, got {self}.")

    def within_descriptors(self) -> ConnectionLimits:
        """The same limits with ``max_connections`` lowered to what the process's file
        descriptor limit (``ulimit -n``) allows."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft - RESERVED_DESCRIPTORS >= self.max_connections:
            return self
        allowed = max(1, soft - RESERVED_DESCRIPTORS)
        log.warning(
            "max_connections=%d lowered to %d: the file descriptor limit is %d (ulimit -n).",
            self.max_connections,
            allowed,
            soft,
        )
        return ConnectionLimits(self.header_timeout_s, self.keep_alive_s, allowed)


def _raw_json_response(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class DescriptorExhaustionLog:
    """An event loop exception handler that logs running out of file descriptors on
    ``accept`` once when it starts and once when connections are accepted again, and
    hands every other error to the loop's default handler."""

    def __init__(self) -> None:
        self.exhausted = False
        self.reported = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in EXHAUSTION_ERRNOS:
            if not self.exhausted:
                self.exhausted = True
                self.reported += 1
                log.error(
                    "Out of file descriptors or memory accepting connections (%s); new "
                    "connections wait until some close. Lower max_connections or raise "
                    "ulimit -n.",
                    error.strerror,
                )
            return
        loop.default_exception_handler(context)

    def accepted(self) -> None:
        if self.exhausted:
            self.exhausted = False
            log.warning("Accepting connections again.")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a header timeout and a connection cap
    (``limits`` is set on the subclass that :func:`run_server` makes)."""

    limits: ConnectionLimits = ConnectionLimits()
    exhaustion: DescriptorExhaustionLog | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.exhaustion is not None:
            self.exhaustion.accepted()
        self._header_timer: asyncio.TimerHandle | None = None
        self._bytes_since_armed = False
        if len(self.connections) > self.limits.max_connections:
            transport.write(
                _raw_json_response(
                    503,
                    "Service Unavailable",
                    f"The server has {self.limits.max_connections} connections open; "
                    "try again shortly.",
                )
            )
            transport.close()
            return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._bytes_since_armed = False
        waiting_after = self.cycle  # a new request replaces the cycle
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout_s, self._header_timeout, waiting_after
        )

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self, waiting_after: Any) -> None:
        self._header_timer = None
        if self.cycle is not waiting_after or self.transport.is_closing():
            return  # the request's headers arrived in time
        if self._bytes_since_armed:
            self.transport.write(
                _raw_json_response(
                    408,
                    "Request Timeout",
                    "The request headers did not arrive within "
                    f"{self.limits.header_timeout_s:g} s.",
                )
            )
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._bytes_since_armed = True
        super().data_received(data)
        started = self.cycle is not None and not self.cycle.response_complete
        if self._header_timer is not None and started:  # the headers are complete
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Waiting for the next request (unless a pipelined one has started already).
        idle = self.cycle is not None and self.cycle.response_complete
        if idle and not self.transport.is_closing() and self._header_timer is None:
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if hasattr(self, "_header_timer"):
            self._disarm_header_timer()
        super().connection_lost(exc)


class GuardedServer(uvicorn.Server):
    """uvicorn's server that installs :class:`DescriptorExhaustionLog` and tells the app
    (``app.state.drain``, a :class:`DrainNotice`) when a graceful shutdown begins."""

    def __init__(self, config: uvicorn.Config, exhaustion: DescriptorExhaustionLog) -> None:
        super().__init__(config)
        self.exhaustion = exhaustion

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(self.exhaustion)
        await super().startup(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = getattr(getattr(self.config.app, "state", None), "drain", None)
        if drain is not None:
            drain.begin(self.config.timeout_graceful_shutdown or 0)
        await super().shutdown(sockets)


def guarded_protocol(
    limits: ConnectionLimits, exhaustion: DescriptorExhaustionLog | None = None
) -> type[H11Protocol]:
    """A :class:`GuardedH11Protocol` subclass bound to ``limits`` (and the log of
    descriptor exhaustion it tells when connections are accepted again)."""
    attributes = {"limits": limits, "exhaustion": exhaustion}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), attributes)


def run_server(
    app: Any,
    host: str,
    port: int,
    limits: ConnectionLimits | None = None,
    log_level: str = "info",
    access_log: bool = True,
    shutdown_timeout_s: float = 30,
) -> bool:
    """Serve ``app`` on ``host:port`` until SIGTERM or Ctrl-C; False when it could not start
    (the port is in use, for instance: uvicorn has logged why)."""
    limits = (limits or ConnectionLimits()).within_descriptors()
    exhaustion = DescriptorExhaustionLog()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(limits, exhaustion),
        log_level=log_level,
        access_log=access_log,
        timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]  (a float works)
        timeout_graceful_shutdown=int(shutdown_timeout_s),
        # Connections waiting to be accepted: beyond the cap they would be refused anyway.
        backlog=min(2048, limits.max_connections),
    )
    server = GuardedServer(config, exhaustion)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when the app's startup fails
        return False
    return server.started
