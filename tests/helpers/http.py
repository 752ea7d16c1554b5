"""A real HTTP server on 127.0.0.1 for the download tests (nothing reaches the internet)."""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer:
    """Serves ``files`` (URL name -> local path) over HTTP on a free port of 127.0.0.1.

    ``truncate[name] = n`` makes the next ``n`` requests for ``name`` announce the whole
    ``Content-Length`` but send half the body and close the connection. A name in ``endless``
    is answered with a body without ``Content-Length`` that goes on (up to ``ENDLESS_CAP``
    bytes, so that a client that never stops cannot fill the disk of the test machine)."""

    ENDLESS_CAP = 64 << 20

    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.truncate: dict[str, int] = {}
        self.endless: set[str] = set()
        self.sent: dict[str, int] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                server.requests.append(name)
                if name in server.endless:
                    self._send_endless(name)
                    return
                if name not in server.files:
                    self.send_error(404)
                    return
                path = server.files[name]
                size = path.stat().st_size
                cut = server.truncate.get(name, 0) > 0
                if cut:
                    server.truncate[name] -= 1
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with path.open("rb") as body:  # streamed: the slow test serves 570 MB
                    if cut:
                        self.wfile.write(body.read(size // 2))
                    else:
                        shutil.copyfileobj(body, self.wfile, 1 << 20)
                self.close_connection = True

            def _send_endless(self, name: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                chunk = b"\0" * (1 << 16)
                server.sent[name] = 0
                try:
                    while server.sent[name] < server.ENDLESS_CAP:
                        self.wfile.write(chunk)
                        server.sent[name] += len(chunk)
                except OSError:
                    pass  # the client stopped reading
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll interval: shutdown() waits for the next poll.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def __enter__(self) -> FileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join()
        self.httpd.server_close()


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens: a source that cannot be reached."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"
