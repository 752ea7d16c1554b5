"""fer-serve under load against the recogniser's own batched speed, measured in the same run.

    python benchmarks/bench_serve.py                          # the paper's network, as served
    python benchmarks/bench_serve.py --arch resnet18 --input-size 64 --duration 20
    python benchmarks/bench_serve.py --json serve.json -- detector_workers=1 batch_window_ms=0

Starts ``python -m fer_lightning.serve`` on 127.0.0.1 (a separate process) with a checkpoint of
fresh weights (speed does not depend on their values; by default ``resmasking_dropout1`` at its
own input size, the network ``fer-serve`` runs for a user) and the project's defaults otherwise
(precision ``auto``, the ``auto`` detector, ``max_batch``). Then, in this order:

1. the upper bound, here in this process while the server idles: ``recognizer.recognize`` on
   ``max_batch`` copies of the bundled single-face photo, decoded and detected once beforehand
   as the server does (so cropping and the network count, detection and HTTP do not), called
   from a worker thread as the server's batcher calls it, in faces/s;
2. ``--sequential`` requests from one client, one after the other (single-request latency);
3. ``--concurrency`` clients (asyncio, httpx, one kept-alive connection each) in this process,
   each POSTing the photo to ``/v1/predict`` again as soon as its answer arrives: one round of
   warm-up (every client answered once), then all start together and keep sending for
   ``--duration`` seconds; the clock stops at the last answer, so that every request started
   counts and the rate is not cut in the middle of a network call;
4. the upper bound again (the machine's load may change during the run): the bound is the mean
   of both.

Every answer is checked (200, one face); failures are counted (they must be 0: exit status 1
otherwise). Prints requests/s, p50/p95 latency, the median of each server stage
(``Server-Timing``: upload = read + decode, detect, recognize = waiting for the batch + the
network), the network calls and their mean size, the ratio of requests/s to the bound, and the
load average; the clients share the machine's cores with the server (their CPU time counts
against it).
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import httpx
import numpy as np
import torch
from run_info import Run, add_options, model_flops_per_image

from fer_lightning.inference.recognizer import EmotionRecognizer
from fer_lightning.inference.samples import ASTRONAUT_PATH
from fer_lightning.models import create_model
from fer_lightning.serve.uploads import decode_image

ROOT = Path(__file__).resolve().parents[1]


def save_checkpoint(path: Path, arch: str, input_size: int | None) -> Path:
    """Fresh weights in this project's Lightning checkpoint layout."""
    torch.manual_seed(0)
    state = {f"net.{k}": v for k, v in create_model(arch).state_dict().items()}
    hyper: dict[str, Any] = {"arch": arch, "num_classes": 7}
    if input_size is not None:
        hyper["input_size"] = input_size
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
    deadline = time.monotonic() + 600
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc; 0 where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The live descendants of ``pid`` (the server's detector workers)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            direct = [int(p) for p in children.read_text().split()]
        except OSError:
            continue
        for child in direct:
            found += [child, *child_pids(child)]
    return found


def cpu_split(pid: int) -> dict[str, float]:
    """CPU seconds of the server process itself and of its live descendants."""
    return {"server": cpu_seconds(pid), "detectors": sum(map(cpu_seconds, child_pids(pid)))}


def batched_faces_per_s(
    recognizer: EmotionRecognizer, photo: bytes, batch: int, repeats: int
) -> tuple[float, float]:
    """``recognizer.recognize`` on ``batch`` copies of ``photo`` (decoded and detected as the
    server does, once), the best of ``repeats`` calls after one warm-up call: (faces/s, CPU
    ms per face of this process in that call)."""
    image = decode_image(photo, max_pixels=50_000_000, working_pixels=16_000_000).image
    found = recognizer.detector.detect(image)
    if len(found) != 1:
        sys.exit(f"{ASTRONAUT_PATH}: expected 1 face, the detector found {len(found)}.")
    images, detections = [image] * batch, [found] * batch

    def timed() -> tuple[float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        recognizer.recognize(images, detections)
        return time.perf_counter() - started, time.process_time() - cpu

    # In a worker thread, as the server's batcher runs the network: on a loaded machine calls
    # from the main thread ran slower (1.3x for resmasking_dropout1; benchmarks/README.md), and
    # such a bound is not the server's.
    with ThreadPoolExecutor(max_workers=1) as network_thread:
        network_thread.submit(timed).result()
        seconds, cpu = min(network_thread.submit(timed).result() for _ in range(repeats))
    return batch / seconds, 1000 * cpu / batch


@dataclass
class Load:
    """What the clients saw: latencies (s), failures (one line each), server stages (ms)."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        p50, p95 = np.percentile(self.latencies, [50, 95]) if self.latencies else (np.nan,) * 2
        return {
            "requests": len(self.latencies),
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": len(self.latencies) / self.wall_s if self.wall_s else 0.0,
            "p50_ms": round(1000 * float(p50), 1),
            "p95_ms": round(1000 * float(p95), 1),
            "errors": len(self.failures),
            "first_errors": self.failures[:5],
            "server_stages_median_ms": {
                name: round(statistics.median(values), 1) for name, values in self.stages.items()
            },
        }


async def post_photo(client: httpx.AsyncClient, photo: bytes, load: Load | None) -> None:
    """One POST of the photo; its latency, check and stages go to ``load`` (None: not kept)."""
    started = time.perf_counter()
    try:
        response = await client.post(
            "/v1/predict", content=photo, headers={"Content-Type": "image/jpeg"}
        )
    except httpx.HTTPError as error:
        if load is not None:
            load.failures.append(f"{type(error).__name__}: {error}")
        return
    elapsed = time.perf_counter() - started
    if load is None:
        return
    if response.status_code != 200 or len(response.json().get("faces", [])) != 1:
        load.failures.append(f"{response.status_code}: {response.text[:200]}")
        return
    load.latencies.append(elapsed)
    for name, duration in re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]):
        load.stages.setdefault(name, []).append(float(duration))


async def run_clients(url: str, photo: bytes, clients: int, duration_s: float) -> Load:
    """``clients`` clients, each with its own kept-alive connection: one warm-up request each,
    then all start together and send one request after another for ``duration_s``; the wall
    time ends at the last answer."""
    load = Load()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        await asyncio.gather(*(post_photo(client, photo, None) for _ in range(clients)))
        started = time.perf_counter()
        deadline = started + duration_s

        async def client_loop() -> None:
            while time.perf_counter() < deadline:
                await post_photo(client, photo, load)

        await asyncio.gather(*(client_loop() for _ in range(clients)))
        load.wall_s = time.perf_counter() - started
    return load


async def run_sequential(url: str, photo: bytes, count: int) -> Load:
    load = Load()
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        await post_photo(client, photo, None)  # warm-up
        started = time.perf_counter()
        for _ in range(count):
            await post_photo(client, photo, load)
        load.wall_s = time.perf_counter() - started
    return load


def batching_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    calls = after["calls"] - before["calls"]
    faces = after["faces"] - before["faces"]
    return {
        "network_calls": calls,
        "faces": faces,
        "mean_faces_per_call": faces / max(calls, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resmasking_dropout1")
    parser.add_argument(
        "--input-size", type=int, default=None, help="network input (default: the arch's own)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="clients at once")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds the clients keep sending"
    )
    parser.add_argument(
        "--sequential", type=int, default=8, help="requests from one client, one at a time"
    )
    parser.add_argument(
        "--bound-repeats", type=int, default=2, help="timed recogniser calls per bound"
    )
    add_options(parser, bf16=False)
    parser.add_argument("overrides", nargs="*", help="fer-serve options, after --")
    args = parser.parse_args()

    run = Run("bench_serve", "faces/s | requests/s", peak_size=args.peak_size)
    photo = ASTRONAUT_PATH.read_bytes()
    recognizer: EmotionRecognizer | None = None
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = save_checkpoint(Path(folder) / "bench.ckpt", args.arch, args.input_size)
        process, url = start_server(checkpoint, args.overrides, Path(folder) / "server.log")
        try:
            health = httpx.get(f"{url}/healthz").json()
            batch = health["batching"]["max_faces"]
            # The recogniser as the server builds it (precision, input size, detector).
            recognizer = EmotionRecognizer.from_checkpoint(
                checkpoint,
                "cpu",
                health["detector"],
                precision=health["precision"],
                input_size=health["input_size"],
                batch_size=batch,
            )
            bound_before, cpu_per_face = batched_faces_per_s(
                recognizer, photo, batch, args.bound_repeats
            )
            print(f"  recogniser, batch {batch}: {bound_before:.2f} faces/s", flush=True)
            one = asyncio.run(run_sequential(url, photo, args.sequential)).summary()
            print(f"  1 client: {one}", flush=True)
            start_stats = httpx.get(f"{url}/healthz").json()["batching"]
            cpu_before, clients_before = cpu_split(process.pid), time.process_time()
            many_load = asyncio.run(run_clients(url, photo, args.concurrency, args.duration))
            clients_cpu = time.process_time() - clients_before
            cpu_after = cpu_split(process.pid)
            many = many_load.summary()
            health = httpx.get(f"{url}/healthz").json()
            many["batching"] = batching_delta(start_stats, health["batching"])
            # Where the CPU went, per answered request (warm-up round included: a few %).
            answered = max(1, many["requests"] + args.concurrency)
            many["cpu_ms_per_request"] = {
                **{k: round(1000 * (cpu_after[k] - cpu_before[k]) / answered) for k in cpu_after},
                "clients": round(1000 * clients_cpu / answered),
            }
            print(f"  {args.concurrency} clients: {many}", flush=True)
            bound_after, cpu_per_face_after = batched_faces_per_s(
                recognizer, photo, batch, args.bound_repeats
            )
            print(f"  recogniser, batch {batch}: {bound_after:.2f} faces/s", flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=300)
            close = getattr(recognizer and recognizer.detector, "close", None)
            if close is not None:  # the detector's worker process
                close()
    bound = (bound_before + bound_after) / 2
    ratio = many["requests_per_s"] / bound
    server = {
        "arch": args.arch,
        "input_size": health["input_size"],
        "precision": health["precision"],
        "detector": health["detector"],
        "detector_workers": health["detector_workers"],
        "window_ms": health["batching"]["window_ms"],
        "max_batch": batch,
        "options": args.overrides,
        "cpus": os.cpu_count(),
        "clients": "asyncio + httpx in the benchmark's process, beside the server's",
    }
    # One face per request: the network's FLOPs per request are its FLOPs per face.
    flops = model_flops_per_image(args.arch, health["input_size"])
    precision = health["precision"]
    run.set_reference(
        f"recogniser, batch {batch} (no HTTP, no detection)",
        bound,
        before=bound_before,
        after=bound_after,
        cpu_ms_per_face=round((cpu_per_face + cpu_per_face_after) / 2),
        **run.utilisation(bound, flops, precision),
    )
    run.add(
        f"{args.concurrency} clients",
        many["requests_per_s"],
        **many,
        **run.utilisation(many["requests_per_s"], flops, precision),
    )
    run.add("1 client", one["requests_per_s"], **one)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"fer-serve: {args.arch} at {health['input_size']} px, {health['precision']}, detector "
        f"{health['detector']} x{health['detector_workers']}, window "
        f"{health['batching']['window_ms']} ms, max batch {batch}, {os.cpu_count()} CPUs, "
        f"options {args.overrides or 'default'}"
    )
    print(
        f"  recogniser, batch {batch}: {bound:.2f} faces/s (before {bound_before:.2f}, after "
        f"{bound_after:.2f}); {run.share_text(run.reference)}"
    )
    for name, result in (("1 client", one), (f"{args.concurrency} clients", many)):
        print(
            f"  {name:>11}: {result['requests']:4d} requests in {result['wall_s']:.1f} s, "
            f"{result['requests_per_s']:6.2f} req/s, p50 {result['p50_ms']:7.0f} ms, p95 "
            f"{result['p95_ms']:7.0f} ms, {result['errors']} errors; server stages (median ms) "
            f"{result['server_stages_median_ms']}"
        )
    print(
        f"  batching: {many['batching']['network_calls']} network calls, "
        f"{many['batching']['mean_faces_per_call']:.1f} faces each on average"
    )
    cpu = many["cpu_ms_per_request"]
    print(
        f"  CPU ms per request: server {cpu['server']} (network, HTTP, decoding), detectors "
        f"{cpu['detectors']}, clients {cpu['clients']}; the recogniser alone "
        f"{run.reference['cpu_ms_per_face']} per face"
    )
    print(
        f"  requests/s over the recogniser's faces/s: {ratio:.0%} "
        f"({run.share_text(run.settings[0])}); load average {load}"
    )
    run.write_json(args.json, ratio=ratio, server=server)
    if many["errors"] or one["errors"]:
        sys.exit(f"{many['errors'] + one['errors']} requests failed: {many['first_errors']}")


if __name__ == "__main__":
    main()
