"""One 3x3 convolution's forward + backward: oneDNN against the project's CPU paths.

    python benchmarks/bench_convs.py [--repeats 4] [--only 224|64] [--json PATH] [--peak-size N]

For the Residual Masking Network's 3x3 convolutions at 224 px (batch 8: 7x7 to 56x56 maps) and
at 64 px (batch 32: 1x1 to 16x16 maps), the median time of forward + backward through: PyTorch's
convolution (oneDNN), ``F.unfold`` + one matrix product over the batch (maps up to 4x4), the
centre tap alone (1x1 maps), Winograd F(2x2, 3x3) and F(4x4, 3x3)
(:func:`~fer_lightning.models.winograd.winograd_conv3x3`, maps of 4x4 and more), and
:class:`~fer_lightning.models.cpu_convs.CPUConv2d`, which picks one of these (what the project
trains with). The reference of each row is oneDNN in the same process.

Each way's model TFLOP/s (the direct convolution's FLOPs, forward + backward, over its time)
is printed as its share of the CPU's fp32 dense matmul peak measured at the start. They are the
FLOPs the model counts (``fer_lightning.models.zoo``), not those the way executes: Winograd and
the centre tap do fewer, so their share can pass 100%.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from run_info import Run, add_options
from torch import nn

from fer_lightning.models.cpu_convs import use_cpu_convs
from fer_lightning.models.winograd import winograd_conv3x3

# input size -> [(batch, in channels, map side, out channels)]: the network's 3x3 convolutions
# with the most FLOPs at that size (python -c on the model table) and the tiny maps of 64 px.
SHAPES = {
    "224": [
        (8, 64, 56, 64),
        (8, 128, 56, 128),
        (8, 256, 28, 256),
        (8, 512, 14, 512),
        (8, 1024, 14, 512),
        (8, 1024, 7, 1024),
    ],
    "64": [
        (32, 1024, 1, 1024),
        (32, 512, 2, 1024),
        (32, 512, 4, 512),
        (32, 256, 8, 256),
        (32, 128, 16, 128),
    ],
}


def median_ms(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up: oneDNN primitives, allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def direct_flops(n: int, c: int, side: int, o: int) -> float:
    """FLOPs of the direct 3x3 convolution's forward + backward (3 products, 2 per multiply-add),
    as the model's FLOP count has them."""
    return 3 * 2 * n * c * o * 9 * side * side


def measure(n: int, c: int, side: int, o: int, repeats: int) -> dict:
    """Milliseconds per forward + backward of each way, for one (N, C, side, side) -> O."""
    torch.manual_seed(0)
    x = torch.randn(n, c, side, side, requires_grad=True)
    conv = nn.Conv2d(c, o, 3, padding=1, bias=False)
    w = conv.weight
    grad = torch.randn(n, o, side, side)

    def onednn():
        F.conv2d(x, w, padding=1).backward(grad)

    def unfold_matmul():
        columns = F.unfold(x, 3, padding=1)
        (w.flatten(1) @ columns).view(n, o, side, side).backward(grad)

    def centre_tap():
        (x.flatten(1) @ w[:, :, 1, 1].t()).view(n, o, 1, 1).backward(grad)

    def winograd(tile: int) -> Callable[[], None]:
        return lambda: winograd_conv3x3(x, w, tile).backward(grad)

    use_cpu_convs(conv)

    def project():
        conv(x).backward(grad)

    ways: dict[str, Callable[[], None]] = {"oneDNN": onednn}
    if side <= 4:
        ways["unfold + matmul"] = unfold_matmul
    if side == 1:
        ways["centre tap"] = centre_tap
    if side >= 4:
        ways["Winograd F(2x2)"] = winograd(2)
        ways["Winograd F(4x4)"] = winograd(4)
    ways["CPUConv2d"] = project
    row = {
        "shape": f"{n}x{c}x{side}x{side} -> {o}",
        "gflop_direct": round(direct_flops(n, c, side, o) / 1e9, 2),
    }
    for name, step in ways.items():
        row[name] = round(median_ms(step, repeats), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--only", choices=sorted(SHAPES), help="only this input size's shapes")
    add_options(parser, bf16=False)
    args = parser.parse_args()
    run = Run("bench_convs", "ms per forward + backward", peak_size=args.peak_size)
    rows = []
    shapes = SHAPES[args.only] if args.only else [s for group in SHAPES.values() for s in group]
    for shape in shapes:
        row = measure(*shape, args.repeats)
        rows.append(row)
        flops = direct_flops(*shape)
        shares = {}
        for name, value in row.items():
            if name in ("shape", "gflop_direct"):
                continue
            # The FLOPs of one forward + backward per its time (ms): model FLOPs per second.
            figures = {"flops_per_second": flops / (value / 1000), "precision": "fp32"}
            if name == "oneDNN":
                run.set_reference(f"{row['shape']}: oneDNN", value, **figures)
                shares[name] = run.reference
                continue
            setting = run.add(f"{row['shape']}: {name}", value, **figures)
            # Times: smaller is better, so the ratio is the reference's time over this one.
            setting["ratio"] = row["oneDNN"] / value
            shares[name] = setting
        print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        print(
            "    TFLOP/s (share of the fp32 peak): "
            + ", ".join(
                f"{name} {s['model_tflops']:.3f} ({100 * s['peak_share']:.0f}%)"
                for name, s in shares.items()
            ),
            flush=True,
        )
    run.write_json(args.json, rows=rows, repeats=args.repeats)


if __name__ == "__main__":
    main()
