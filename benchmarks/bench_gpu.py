"""GPU benchmark: training throughput and model FLOP utilisation, inference throughput, DDP.

    python benchmarks/bench_gpu.py [--json gpu.json] [--peak-tflops 989]
    python benchmarks/bench_gpu.py --dry-run [--compile] [--json dry.json]

On one CUDA GPU, ``resmasking_dropout1`` at 224 (``--arch``, ``--size``):

- training images/s (forward, cross-entropy, backward, the paper's RAdam step; random batches
  already on the GPU) in fp32, bf16-mixed, bf16-mixed + channels-last, and bf16-mixed +
  channels-last + ``torch.compile``, each with its model FLOP utilisation: images/s x 3 x the
  forward FLOPs of one image (``fer_lightning.models.zoo.describe``) / the GPU's dense peak
  (bf16 for the bf16 settings; TF32 for fp32, since PyTorch runs fp32 convolutions in TF32 by
  default). The peaks come from a table by device name, or ``--peak-tflops`` and
  ``--peak-tflops-fp32``;
- inference images/s at batch 1, 8, 64 and 256 (bf16 autocast, eval, inference mode,
  channels-last);
- with two GPUs or more, training images/s of DDP on two (one process per GPU, NCCL), bf16-mixed
  + channels-last, the per-GPU batch as on one GPU.

Each setting runs ``--warmup`` untimed steps, then ``--steps`` timed ones between two
``torch.cuda.synchronize()``. The defaults finish in a few minutes on an H100/H200, most of it
``torch.compile`` (the compiled setting runs last, after inference); a setting that would start
after ``--budget-s`` seconds is skipped and noted.
A setting that fails (out of memory, a compiler error) is recorded under ``failed`` in the JSON
and the others still run; the exit status is then 1.

``--dry-run`` runs every path once on the CPU, tiny (resnet18 at 32 px, batch 2, 1 warm-up and
1 timed step per setting, no ``torch.compile`` unless ``--compile``, no DDP): a check that the
script works (CI), not a measurement.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from run_info import Run, add_options

from fer_lightning.cli.config import CONFIG_DIR
from fer_lightning.models import create_model
from fer_lightning.models.zoo import describe
from fer_lightning.runtime import autocast

# Dense peak TFLOP/s (bf16, TF32) by a part of the device name; the first match wins, so a
# longer name comes before a name it contains (H100 PCIe before H100, A100 before A10).
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.0, 494.7),
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.0, 494.7),
    ("A100", 312.0, 156.0),
    ("L40S", 362.1, 183.0),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 60.0),
    ("A10", 125.0, 62.5),
    ("RTX 4090", 165.2, 82.6),
)
# (name, precision, channels_last, torch.compile); the first is the reference.
TRAIN_SETTINGS: tuple[tuple[str, str, bool, bool], ...] = (
    ("fp32", "32-true", False, False),
    ("bf16-mixed", "bf16-mixed", False, False),
    ("bf16-mixed + channels-last", "bf16-mixed", True, False),
    ("bf16-mixed + channels-last + torch.compile", "bf16-mixed", True, True),
)
INFERENCE_BATCHES = (1, 8, 64, 256)
DDP_SETTING = TRAIN_SETTINGS[2]
DDP_WORLD = 2


class Terminated(Exception):
    """The process was asked to stop (SIGTERM) while a setting was being measured."""


def peak_tflops(device: torch.device, bf16: float | None, fp32: float | None) -> dict:
    """{"bf16": TFLOP/s or None, "fp32": ...}: the overrides, else the table's for this GPU."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    found = next(((b, t) for key, b, t in PEAK_TFLOPS if key in name), (None, None))
    return {"bf16": bf16 or found[0], "fp32": fp32 or found[1], "device": name or "cpu"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_phases(
    step: Callable[[], None], warmup: int, steps: int, device: torch.device
) -> tuple[float, float]:
    """(seconds of the ``warmup`` untimed calls of ``step``, seconds of the ``steps`` timed
    ones after them)."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmed = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return warmed - start, time.perf_counter() - warmed


def timed(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    return timed_phases(step, warmup, steps, device)[1]


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def max_memory_gib(device: torch.device) -> float | None:
    """The most GPU memory PyTorch's tensors held since the last reset (None on the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def paper_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """RAdam with conf/optimizer/radam.yaml's settings."""
    settings = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "optimizer" / "radam.yaml"))
    settings.pop("_target_")
    return torch.optim.RAdam(model.parameters(), **settings)


def training_step(
    arch: str,
    size: int,
    batch: int,
    device: torch.device,
    precision: str,
    channels_last: bool,
    compile_model: bool,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> Callable[[], None]:
    """One training step of a fresh ``arch`` on a fixed random batch, as a closure."""
    torch.manual_seed(0)
    model = create_model(arch).to(device).train()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = paper_optimizer(model)
    if wrap is not None:
        model = wrap(model)
    network = torch.compile(model) if compile_model else model
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    y = torch.randint(0, 7, (batch,), device=device)

    def step() -> None:
        with autocast(precision, device):
            loss = F.cross_entropy(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def inference_step(arch: str, size: int, batch: int, device: torch.device) -> Callable[[], None]:
    """One bf16 forward pass in inference mode of a fresh ``arch``, as a closure."""
    torch.manual_seed(0)
    model = create_model(arch).to(device).eval().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode(), autocast("bf16", device):
            model(x)

    return step


def free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def ddp_worker(rank: int, args: argparse.Namespace, port: int, result: str) -> None:
    """One DDP process on GPU ``rank`` (NCCL; gloo on the CPU where there is no GPU, to check
    this code); rank 0 writes the seconds of the timed steps."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=DDP_WORLD)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    _, precision, channels_last, _ = DDP_SETTING
    step = training_step(
        args.arch,
        args.size,
        args.batch,
        device,
        precision,
        channels_last,
        False,
        wrap=lambda m: DistributedDataParallel(m, device_ids=[rank] if cuda else None),
    )
    seconds = timed(step, args.warmup, args.steps, device)
    dist.barrier()
    if rank == 0:
        Path(result).write_text(str(seconds))
    dist.destroy_process_group()


def ddp_throughput(args: argparse.Namespace) -> float:
    """Images/s of DDP training on ``DDP_WORLD`` GPUs (the batch per GPU as on one)."""
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        result = str(Path(folder) / "seconds")
        mp.spawn(ddp_worker, args=(args, port, result), nprocs=DDP_WORLD, join=True)
        seconds = float(Path(result).read_text())
    return DDP_WORLD * args.batch * args.steps / seconds


def utilisation(images_per_s: float, gflops: float, peak: float | None) -> float | None:
    """Model FLOP utilisation: 3 x forward FLOPs per trained image over the peak."""
    return images_per_s * 3 * gflops / (peak * 1e3) if peak else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resmasking_dropout1")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="training batch (per GPU)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per setting")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak")
    parser.add_argument("--peak-tflops-fp32", type=float, help="its dense TF32 (fp32) peak")
    parser.add_argument("--budget-s", type=float, default=420, help="skip settings after this")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="every path once on the CPU: resnet18, 32 px, batch 2, 1+1 steps, no DDP",
    )
    parser.add_argument(
        "--compile", action="store_true", help="with --dry-run: also run torch.compile"
    )
    add_options(parser, bf16=False)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.arch, args.size, args.batch, args.warmup, args.steps = "resnet18", 32, 2, 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here; --dry-run runs every path on the CPU.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    run = Run("bench_gpu", "images/s")
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    peaks = peak_tflops(device, args.peak_tflops, args.peak_tflops_fp32)
    gflops = float(describe(args.arch, args.size)["gflops"])
    print(
        f"{peaks['device']}: {args.arch} at {args.size}, {gflops:.2f} forward GFLOPs per image, "
        f"peak TFLOP/s bf16 {peaks['bf16']}, fp32 (TF32) {peaks['fp32']}; training batch "
        f"{args.batch}, {args.warmup} warm-up + {args.steps} timed steps per setting"
        + (" [DRY RUN on the CPU: not a measurement]" if args.dry_run else "")
    )

    # A time limit (``timeout``'s SIGTERM) ends the setting in progress; the JSON is still
    # written with everything measured before it.
    state = {"measuring": False, "terminated": False}

    def on_sigterm(signum: int, frame: Any) -> None:
        state["terminated"] = True
        if state["measuring"]:
            raise Terminated("stopped by SIGTERM (a time limit)")

    signal.signal(signal.SIGTERM, on_sigterm)

    def over_budget(name: str) -> bool:
        if state["terminated"]:
            run.skipped.append(f"{name}: stopped by SIGTERM (a time limit)")
            return True
        if time.perf_counter() - started > args.budget_s:
            run.skipped.append(f"{name}: past --budget-s {args.budget_s:g}")
            return True
        return False

    failed: list[dict[str, str]] = []

    def attempt(name: str, measure: Callable[[], None]) -> None:
        """Run one setting; an error (out of memory, a compiler failure) is recorded and the
        next setting runs, so that a first run on a new GPU reports everything it can."""
        state["measuring"] = True
        try:
            measure()
        except Exception as error:  # any failure of one setting
            failed.append({"name": name, "error": f"{type(error).__name__}: {error}"[:2000]})
            print(f"FAILED {name}: {type(error).__name__}: {error}", file=sys.stderr)
        finally:
            state["measuring"] = False
            free(device)

    inference: list[dict[str, Any]] = []
    for batch in INFERENCE_BATCHES:
        if over_budget(f"inference batch {batch}"):
            continue

        def measure_inference(batch=batch) -> None:
            step = inference_step(args.arch, args.size, batch, device)
            speed = batch * args.steps / timed(step, args.warmup, args.steps, device)
            inference.append({"batch": batch, "value": speed})

        attempt(f"inference batch {batch}", measure_inference)

    for name, precision, channels_last, compile_model in TRAIN_SETTINGS:
        if compile_model and args.dry_run and not args.compile:
            run.skipped.append(f"{name}: dry run without --compile")
            continue
        if over_budget(name):
            continue

        def measure_training(
            name=name, precision=precision, channels_last=channels_last, compiled=compile_model
        ) -> None:
            reset_peak_memory(device)
            step = training_step(
                args.arch, args.size, args.batch, device, precision, channels_last, compiled
            )
            warmup_s, timed_s = timed_phases(step, args.warmup, args.steps, device)
            speed = args.batch * args.steps / timed_s
            peak = peaks["fp32" if precision == "32-true" else "bf16"]
            figures = {
                "mfu": utilisation(speed, gflops, peak),
                "peak_tflops": peak,
                "warmup_s": warmup_s,  # with torch.compile: mostly the compile time
                "max_memory_gib": max_memory_gib(device),
            }
            if run.reference is None:
                run.set_reference(name, speed, **figures)
            else:
                run.add(name, speed, **figures)

        attempt(name, measure_training)

    ddp: dict[str, Any]
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if args.dry_run:
        ddp = {"skipped": "dry run"}
    elif gpus < DDP_WORLD:
        ddp = {"skipped": f"{gpus} GPU here, DDP needs {DDP_WORLD}"}
    elif over_budget("DDP"):
        ddp = {"skipped": "past --budget-s"}
    else:
        ddp = {"skipped": "failed (see failed)"}

        def measure_ddp() -> None:
            speed = ddp_throughput(args)
            settings = run.settings
            single = next((s["value"] for s in settings if s["name"] == DDP_SETTING[0]), None)
            ddp.clear()
            ddp.update(
                name=f"DDP on {DDP_WORLD} GPUs, {DDP_SETTING[0]}",
                value=speed,
                scaling=speed / single if single else None,
                mfu_per_gpu=utilisation(speed / DDP_WORLD, gflops, peaks["bf16"]),
            )

        attempt("DDP", measure_ddp)

    print_table(run, inference, ddp)
    run.write_json(
        args.json,
        dry_run=args.dry_run,
        device=peaks["device"],
        gpu_bf16_native=device.type == "cuda" and torch.cuda.is_bf16_supported(),
        arch=args.arch,
        size=args.size,
        batch=args.batch,
        warmup=args.warmup,
        steps=args.steps,
        forward_gflops_per_image=gflops,
        peak_tflops={"bf16": peaks["bf16"], "fp32_tf32": peaks["fp32"]},
        cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        inference=inference,
        ddp=ddp,
        failed=failed,
        seconds=time.perf_counter() - started,
    )
    return 1 if failed else 0


def print_table(run: Run, inference: list[dict[str, Any]], ddp: dict[str, Any]) -> None:
    def mfu(value: float | None) -> str:
        return f"{value:.1%}" if value is not None else "-"

    print(f"\n{'training':<46}{'images/s':>10}{'vs fp32':>9}{'MFU':>8}")
    rows = [{**run.reference, "ratio": 1.0}] if run.reference else []
    for row in [*rows, *run.settings]:
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        print(f"{row['name']:<46}{row['value']:>10.1f}{ratio:>9}{mfu(row['mfu']):>8}")
    if "value" in ddp:
        print(f"{ddp['name']:<46}{ddp['value']:>10.1f}{'':>9}{mfu(ddp['mfu_per_gpu']):>8}")
    else:
        print(f"DDP: skipped ({ddp['skipped']})")
    print(f"\n{'inference (bf16, eval)':<46}{'images/s':>10}")
    for row in inference:
        print(f"{'batch ' + str(row['batch']):<46}{row['value']:>10.1f}")
    for note in run.skipped:
        print(f"skipped {note}")


if __name__ == "__main__":
    sys.exit(main())
