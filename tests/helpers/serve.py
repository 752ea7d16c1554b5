"""A real ``fer-serve`` process on 127.0.0.1 and a free port, for the service and browser tests."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers.hydra import ENV

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Cold start on a loaded 2-core machine: torch, the checkpoint, the detector's worker process.
STARTUP_TIMEOUT_S = 180


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def healthz(self) -> dict:
        return httpx.get(f"{self.url}/healthz", timeout=30).json()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_server(checkpoint: Path, log_path: Path, *overrides: str) -> Iterator[ServerProcess]:
    """``python -m fer_lightning.serve ckpt_path=checkpoint port=<free> overrides...``, ready
    (``/healthz`` answers) on entry, stopped with SIGTERM on exit."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "fer_lightning.serve",
        f"ckpt_path={checkpoint}",
        "host=127.0.0.1",
        f"port={port}",
        "device=cpu",
        *overrides,
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=ENV, stdout=log, stderr=log)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_ready(server: ServerProcess) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"fer-serve exited with {server.process.returncode}:\n{server.log()}"
            )
        try:
            if httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"fer-serve did not answer within {STARTUP_TIMEOUT_S} s:\n{server.log()}")


@contextlib.contextmanager
def small_app_server(
    tmp_path: Path, **options: float | str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m tests.helpers.serve_app <free port> key=value...`` (the app over a small
    network under ``run_server``), ready on entry, stopped with SIGTERM on exit; yields the
    process (its log at ``process.log_path``) and the port."""
    port = free_port()
    command = [sys.executable, "-m", "tests.helpers.serve_app", str(port)]
    command += [f"{key}={value}" for key, value in options.items()]
    log_path = tmp_path / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=ENV, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            time.sleep(0.25)
        process.log_path = log_path  # type: ignore[attr-defined]
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
