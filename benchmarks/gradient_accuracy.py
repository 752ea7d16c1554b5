"""How far fp32 gradients are from float64, for PyTorch's convolutions and the project's.

    python benchmarks/gradient_accuracy.py [--size 32] [--batch 4] [--seeds 3] [--json g.json]

One forward and backward of ``resmasking_dropout1`` per path: float64 (the reference), fp32 with
PyTorch's convolutions, fp32 with ``CPUConv2d`` (``model.cpu_convs``). For each parameter the
error is ||g - g64|| / (||g64|| + 1e-6 * the largest |g64|), reported as the median and the
largest over all parameters, with batch norm in training mode (statistics of the batch, as in
training) and in eval mode (a fixed affine map). Batch norm over a handful of values (1x1 maps of
a few images at 32 px) is ill-conditioned: rounding of 1e-7 in any convolution is amplified, so
both fp32 paths can be percents from float64 there while they agree to 1e-6 in eval mode.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch

from fer_lightning.models import create_model
from fer_lightning.models.cpu_convs import use_cpu_convs


def gradients(network: torch.nn.Module, x: torch.Tensor, train: bool) -> list[torch.Tensor]:
    net = copy.deepcopy(network)  # a training-mode forward changes batch-norm statistics
    net.train(train)
    if train:
        net.fc[0].p = 0.0  # the same network on every path: no dropout
    net(x).logsumexp(dim=1).sum().backward()
    return [p.grad.double() for p in net.parameters()]


def errors(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
    largest = max(g.abs().max().item() for g in reference)
    values = [
        (g - r).norm().item() / (r.norm().item() + 1e-6 * largest)
        for g, r in zip(grads, reference, strict=True)
    ]
    return {"median": statistics.median(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32, help="input side (a multiple of 32)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3, help="inputs tried (seed 0, 1, ...)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")
    torch.manual_seed(0)
    pytorch = create_model("resmasking_dropout1")
    project = copy.deepcopy(pytorch)
    use_cpu_convs(project)
    float64 = copy.deepcopy(pytorch).double()
    rows = []
    for seed in range(args.seeds):
        x = torch.rand(
            args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(seed)
        )
        for train in (True, False):
            reference = gradients(float64, x.double(), train)
            row = {"seed": seed, "batch_norm": "train" if train else "eval"}
            for name, net in (("pytorch_fp32", pytorch), ("cpu_convs_fp32", project)):
                row[name] = errors(gradients(net, x, train), reference)
            rows.append(row)
            print(
                f"seed {seed} batch norm {row['batch_norm']:5}: "
                + "  ".join(
                    f"{k} median {v['median']:.1e} max {v['max']:.1e}"
                    for k, v in row.items()
                    if isinstance(v, dict)
                )
            )
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"size": args.size, "batch": args.batch, "rows": rows}, file, indent=2)


if __name__ == "__main__":
    main()
