"""fer-serve under load: requests one at a time against many at once, on a real server process.

    python benchmarks/bench_serve.py                                   # resnet18 at 64 px
    python benchmarks/bench_serve.py --arch resmasking_dropout1 --input-size 224 \\
        --sequential 8 --requests 48 --concurrency 16 --photo-only     # the paper's network
    python benchmarks/bench_serve.py -- detector_workers=1 batch_window_ms=0   # fer-serve options

Starts ``python -m fer_lightning.serve`` on 127.0.0.1 with a checkpoint of fresh weights (speed
does not depend on their values), posts the bundled photo (1 face) and its 2x2 mosaic (4 faces)
alternately: ``--sequential`` requests one after the other, then ``--requests`` with at most
``--concurrency`` in flight (httpx.AsyncClient). Every answer is checked (200, its face count).
Prints requests/s, p50/p95 latency, the median of each server stage (``Server-Timing``:
upload = read + decode, detect, recognize = waiting for the batch + the network) and how many
network calls the batcher made. Only the ratios travel between machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import httpx
import torch

from fer_lightning.inference.samples import ASTRONAUT_PATH, astronaut, mosaic
from fer_lightning.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def save_checkpoint(path: Path, arch: str, input_size: int) -> Path:
    """Fresh weights in this project's Lightning checkpoint layout."""
    torch.manual_seed(0)
    state = {f"net.{k}": v for k, v in create_model(arch).state_dict().items()}
    hyper = {"arch": arch, "num_classes": 7, "input_size": input_size}
    torch.save({"state_dict": state, "hyper_parameters": hyper}, path)
    return path


def start_server(checkpoint: Path, overrides: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "fer_lightning.serve", f"ckpt_path={checkpoint}"]
    command += [f"port={port}", "device=cpu", "access_log=false", *overrides]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"fer-serve exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.25)
    process.kill()
    sys.exit(f"fer-serve did not start:\n{log.read_text()}")


async def post_all(url: str, payloads: list[tuple[bytes, int]], concurrency: int) -> dict:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def post(payload: bytes, faces: int) -> None:
            async with gate:
                started = time.perf_counter()
                response = await client.post(
                    "/v1/predict", content=payload, headers={"Content-Type": "image/jpeg"}
                )
                latencies.append(time.perf_counter() - started)
            if response.status_code != 200 or len(response.json()["faces"]) != faces:
                raise AssertionError(f"{response.status_code}: {response.text[:300]}")
            timing = response.headers["server-timing"]
            for name, duration in re.findall(r"(\w+);dur=([\d.]+)", timing):
                stages.setdefault(name, []).append(float(duration))

        started = time.perf_counter()
        await asyncio.gather(*(post(*p) for p in payloads))
        wall = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "rate": len(payloads) / wall,
        "p50": 1000 * cuts[49],
        "p95": 1000 * cuts[94],
        "stages": {k: round(statistics.median(v)) for k, v in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--sequential", type=int, default=40)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--photo-only", action="store_true", help="no mosaics (1 face each)")
    parser.add_argument("overrides", nargs="*", help="fer-serve options, after --")
    args = parser.parse_args()

    photo = ASTRONAUT_PATH.read_bytes()
    ok, encoded = cv2.imencode(".jpg", mosaic(astronaut()))
    assert ok
    four = encoded.tobytes()
    count = max(args.sequential, args.requests)
    payloads = [(photo, 1) if args.photo_only or i % 2 == 0 else (four, 4) for i in range(count)]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = save_checkpoint(Path(folder) / "bench.ckpt", args.arch, args.input_size)
        process, url = start_server(checkpoint, args.overrides, Path(folder) / "server.log")
        try:
            asyncio.run(post_all(url, payloads[:3], 1))  # warm up
            before = httpx.get(f"{url}/healthz").json()["batching"]
            one = asyncio.run(post_all(url, payloads[: args.sequential], 1))
            middle = httpx.get(f"{url}/healthz").json()["batching"]
            many = asyncio.run(post_all(url, payloads[: args.requests], args.concurrency))
            health = httpx.get(f"{url}/healthz").json()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
    after = health["batching"]
    print(
        f"fer-serve: {args.arch} at {args.input_size} px, {health['precision']}, detector "
        f"{health['detector']} x{health['detector_workers']}, window {after['window_ms']} ms, "
        f"{os.cpu_count()} CPUs, options {args.overrides or 'default'}"
    )
    for name, result, calls, requests in (
        ("sequential", one, middle["calls"] - before["calls"], args.sequential),
        (f"{args.concurrency} in flight", many, after["calls"] - middle["calls"], args.requests),
    ):
        print(
            f"  {name:>14}: {requests:4d} requests, {result['rate']:6.2f} req/s, p50 "
            f"{result['p50']:7.0f} ms, p95 {result['p95']:7.0f} ms, {calls} network calls; "
            f"server stages (median ms) {result['stages']}"
        )
    print(
        f"  throughput ratio: {many['rate'] / one['rate']:.2f}x; largest batch "
        f"{after['largest_requests']} requests / {after['largest_faces']} faces"
    )


if __name__ == "__main__":
    main()
