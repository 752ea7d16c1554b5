"""Training-step throughput of an architecture: Lightning settings against a plain fp32 loop.

    python benchmarks/bench_train.py [--arch resmasking_dropout1] [--sizes 224:8,64:32]
        [--steps 3] [--json PATH] [--peak-size 4096] [--include-emulated-bf16]

For each input size (and its batch), every configuration trains the same network from the same
initial weights on the same random batches in this one process; the figure that matters is each
one's ratio to the plain PyTorch fp32 loop measured beside it, not the absolute images/s
(shared machines are noisy). The reference is the textbook loop: ``nn.Conv2d`` as built,
``torch.optim.RAdam`` with its defaults. Every optimiser starts in RAdam's rectified phase (the
state of step 100), as it is for all but the first five steps of a run; the first step of each
configuration is warm-up and not timed. The loss after the timed steps is printed beside each
configuration: fp32 settings must match the reference's to a few decimals. The bf16 settings
run only where the CPU has native bf16 (else skipped; ``--include-emulated-bf16`` runs them).
Each configuration's model FLOPs per second (3x the forward FLOPs of an image, x images/s) are
printed as its share of the CPU's dense matmul peak measured at the start (bf16-mixed against
the bf16 peak, 32-true and the plain loop against the fp32 peak).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from run_info import Run, add_options, model_flops_per_image
from torch.utils.data import DataLoader, Dataset

from fer_lightning.cli.config import CONFIG_DIR
from fer_lightning.models import create_model
from fer_lightning.training.console import silence_lightning_tips
from fer_lightning.training.module import FERClassifier

RECTIFIED_STEP = 100.0
DROPOUT_SEED = 1  # set before the first step of every configuration: the same dropout mask


class RandomBatches(Dataset):
    """``steps`` identical-shape model inputs (already at the network's size) and labels."""

    def __init__(self, steps: int, batch: int, size: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.rand(steps, batch, 3, size, size, generator=generator)
        self.y = torch.randint(0, 7, (steps, batch), generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def start_rectified(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter the (zero) moments of a run that is past RAdam's first steps."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p] = {
                "step": torch.tensor(RECTIFIED_STEP),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }


class StepTimer(pl.Callback):
    """Rectified optimiser state at the start; the first loss; wall time after warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps, self.loss = warmup, 0.0, 0.0, 0, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        start_rectified(trainer.optimizers[0])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            torch.manual_seed(DROPOUT_SEED)
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.loss = float(outputs["loss"])
        if batch_idx >= self.warmup:
            self.end = time.perf_counter()
            self.steps = batch_idx - self.warmup + 1


def plain_fp32_loop(arch: str, data: RandomBatches, warmup: int) -> tuple[float, float]:
    """(images/s, first loss) of the textbook loop: forward, cross-entropy, backward, RAdam."""
    torch.manual_seed(0)
    model = create_model(arch).train()
    optimizer = torch.optim.RAdam(model.parameters(), lr=1e-4, weight_decay=1e-3)
    start_rectified(optimizer)
    torch.manual_seed(DROPOUT_SEED)
    start, first_loss = 0.0, 0.0
    for step, (x, y) in enumerate(zip(data.x, data.y, strict=True)):
        if step == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 0:
            first_loss = loss.item()
    images_per_s = (len(data) - warmup) * data.x.shape[1] / (time.perf_counter() - start)
    return images_per_s, first_loss


def lightning_loop(
    arch: str, data: RandomBatches, warmup: int, precision: str, **module_settings
) -> tuple[float, float]:
    """(images/s, first loss) of ``Trainer.fit`` over the same batches with these settings."""
    torch.manual_seed(0)
    optimizer = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "optimizer" / "radam.yaml"))
    module = FERClassifier(arch=arch, scheduler=None, optimizer=optimizer, **module_settings)
    timer = StepTimer(warmup)
    silence_lightning_tips()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    loader = DataLoader(data, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return timer.steps * data.x.shape[1] / (timer.end - timer.start), timer.loss


# name -> (precision, FERClassifier settings); the project's defaults are cpu_convs=auto
# (Winograd and tiny-map convolutions where they pay off: AVX2 CPUs) and
# conf/optimizer/radam.yaml (the fused RAdam).
CONFIGURATIONS = {
    "Lightning 32-true, project defaults": ("32-true", {}),
    "Lightning 32-true, defaults + channels_last": ("32-true", {"channels_last": True}),
    "Lightning 32-true, defaults with CPU convs": ("32-true", {"cpu_convs": True}),
    "Lightning 32-true, defaults without CPU convs": ("32-true", {"cpu_convs": False}),
    "Lightning bf16-mixed, defaults": ("bf16-mixed", {}),
    "Lightning bf16-mixed, defaults + channels_last": ("bf16-mixed", {"channels_last": True}),
}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"224:8,64:32"`` -> [(224, 8), (64, 32)] (input side, batch)."""
    sizes = []
    for item in text.split(","):
        size, _, batch = item.partition(":")
        sizes.append((int(size), int(batch or 8)))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resmasking_dropout1")
    parser.add_argument(
        "--sizes", default="224:8,64:32", help="input side:batch pairs, comma-separated"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--only", action="append", default=None, help="run only these configurations (repeat)"
    )
    add_options(parser)
    args = parser.parse_args()
    run = Run("bench_train", "images/s", args.include_emulated_bf16, args.peak_size)
    print(
        f"{args.arch}, {args.steps} timed steps, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    rows = []
    references = []
    for size, batch in parse_sizes(args.sizes):
        data = RandomBatches(args.steps + args.warmup, batch, size)
        flops = model_flops_per_image(args.arch, size, training=True)
        speed, loss = plain_fp32_loop(args.arch, data, args.warmup)
        name = f"{size} px, batch {batch}: plain PyTorch loop, fp32"
        run.set_reference(
            name, speed, flops_per_item=flops, precision="fp32", size=size, batch=batch, loss=loss
        )
        references.append(run.reference)
        rows.append({**run.reference, "ratio": 1.0})
        print(
            f"{name}: {speed:.2f} images/s, first loss {loss:.6f}; {run.share_text(run.reference)}",
            flush=True,
        )
        for label, (precision, settings) in CONFIGURATIONS.items():
            if args.only and label not in args.only:
                continue
            if precision.startswith("bf16"):
                label = run.bf16_label(label)  # None: emulated here, skipped
                if label is None:
                    continue
            name = f"{size} px, batch {batch}: {label}"
            speed, loss = lightning_loop(args.arch, data, args.warmup, precision, **settings)
            setting = run.add(
                name,
                speed,
                flops_per_item=flops,
                precision=precision,
                size=size,
                batch=batch,
                loss=loss,
            )
            rows.append(setting)
            print(
                f"{name}: {speed:.2f} images/s, {setting['ratio']:.2f}x, "
                f"first loss {loss:.6f}; {run.share_text(setting)}",
                flush=True,
            )
    width = max(len(row["name"]) for row in rows) + 2
    print(
        f"\n{'configuration':<{width}}{'images/s':>10}{'vs plain fp32':>15}{'first loss':>12}"
        f"{'TFLOP/s':>9}{'of peak':>14}"
    )
    for row in rows:
        share = f"{100 * row['peak_share']:.1f}% {row['peak']}" if row["peak_share"] else "-"
        print(
            f"{row['name']:<{width}}{row['value']:>10.2f}{row['ratio']:>14.2f}x{row['loss']:>12.6f}"
            f"{row['model_tflops']:>9.3f}{share:>14}"
        )
    for note in run.skipped:
        print(f"skipped {note}")
    run.write_json(
        args.json, arch=args.arch, references=references, steps=args.steps, warmup=args.warmup
    )


if __name__ == "__main__":
    main()
