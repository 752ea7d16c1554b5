"""One convolution's forward + backward on small feature maps: oneDNN against the alternatives.

    python benchmarks/bench_convs.py [--repeats 4] [--json PATH]

For the Residual Masking Network's 3x3 convolutions at 32-64 px input (1x1 to 8x8 maps, 256-1024
channels, batch 32), the median time of forward + backward through: PyTorch's convolution
(oneDNN), the same with oneDNN off, ``F.unfold`` + one matrix product over the batch, the centre
tap alone (1x1 maps), and :class:`~fer_lightning.models.small_maps.SmallMapConv2d` (what the
project uses). The reference of each row is oneDNN in the same process.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from run_info import Run, add_options
from torch import nn

from fer_lightning.models.small_maps import use_small_map_convs

# (batch, in channels, map side, out channels)
SHAPES = [
    (32, 1024, 1, 1024),
    (32, 512, 2, 1024),
    (32, 512, 2, 512),
    (32, 512, 4, 512),
    (32, 256, 8, 256),
]


def median_ms(step: Callable[[], None], repeats: int) -> float:
    step()  # warm-up: oneDNN primitives, allocations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def measure(n: int, c: int, side: int, o: int, repeats: int) -> dict:
    """Milliseconds per forward + backward of each way, for one (N, C, side, side) -> O."""
    torch.manual_seed(0)
    x = torch.randn(n, c, side, side, requires_grad=True)
    conv = nn.Conv2d(c, o, 3, padding=1, bias=False)
    w = conv.weight
    grad = torch.randn(n, o, side, side)

    def onednn():
        F.conv2d(x, w, padding=1).backward(grad)

    def without_onednn():
        with torch.backends.mkldnn.flags(enabled=False):
            F.conv2d(x, w, padding=1).backward(grad)

    def unfold_matmul():
        columns = F.unfold(x, 3, padding=1)
        (w.flatten(1) @ columns).view(n, o, side, side).backward(grad)

    def centre_tap():
        (x.flatten(1) @ w[:, :, 1, 1].t()).view(n, o, 1, 1).backward(grad)

    use_small_map_convs(conv)

    def small_map_conv():
        conv(x).backward(grad)

    ways = {"oneDNN": onednn, "oneDNN off": without_onednn, "unfold + matmul": unfold_matmul}
    if side == 1:
        ways["centre tap"] = centre_tap
    ways["SmallMapConv2d"] = small_map_conv
    row = {
        "shape": f"{n}x{c}x{side}x{side} -> {o}",
        "gflop_all_taps": round(3 * 2 * n * c * o * 9 * side * side / 1e9, 2),
    }
    for name, step in ways.items():
        row[name] = round(median_ms(step, repeats), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    add_options(parser, bf16=False)
    args = parser.parse_args()
    run = Run("bench_convs", "ms per forward + backward")
    rows = []
    for shape in SHAPES:
        row = measure(*shape, args.repeats)
        rows.append(row)
        run.set_reference(f"{row['shape']}: oneDNN", row["oneDNN"])
        for name, value in row.items():
            if name not in ("shape", "gflop_all_taps", "oneDNN"):
                run.add(f"{row['shape']}: {name}", value)
                # Times: smaller is better, so the ratio is the reference's time over this one.
                run.settings[-1]["ratio"] = row["oneDNN"] / value
        print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    run.write_json(args.json, rows=rows, repeats=args.repeats)


if __name__ == "__main__":
    main()
