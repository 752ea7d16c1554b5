"""Training-step throughput of an architecture: Lightning settings against a plain fp32 loop.

    python benchmarks/bench_train.py [--arch resmasking_dropout1] [--size 224] [--batch 8]
        [--json PATH] [--include-emulated-bf16]

Every configuration trains the same network on the same random batches in this one process;
the figure that matters is each one's ratio to the plain PyTorch fp32 loop measured here, not
the absolute images/s (shared machines are noisy). The first steps of each configuration are
warm-up and not timed. The bf16 settings run only where the CPU has native bf16 (else they are
skipped: ``--include-emulated-bf16`` runs them, marked).
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
from run_info import Run, add_options
from torch.utils.data import DataLoader, Dataset

from fer_lightning.cli.config import CONFIG_DIR
from fer_lightning.training.module import FERClassifier


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


class StepTimer(pl.Callback):
    """Wall time of the training steps after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.end = time.perf_counter()
            self.steps = batch_idx - self.warmup + 1


def plain_fp32_loop(arch: str, data: RandomBatches, warmup: int) -> float:
    """images/s of the textbook loop: forward, cross-entropy, backward, RAdam step."""
    torch.manual_seed(0)
    model = FERClassifier(arch=arch).net.train()
    optimizer = torch.optim.RAdam(model.parameters(), lr=1e-4, weight_decay=1e-3)
    start = 0.0
    for step, (x, y) in enumerate(zip(data.x, data.y, strict=True)):
        if step == warmup:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (len(data) - warmup) * data.x.shape[1] / (time.perf_counter() - start)


def lightning_loop(
    arch: str, data: RandomBatches, warmup: int, precision: str, channels_last: bool
) -> float:
    """images/s of ``Trainer.fit`` over the same batches with the given settings."""
    torch.manual_seed(0)
    paper_optimizer = OmegaConf.to_container(
        OmegaConf.load(CONFIG_DIR / "optimizer" / "radam.yaml")
    )
    module = FERClassifier(
        arch=arch, channels_last=channels_last, scheduler=None, optimizer=paper_optimizer
    )
    timer = StepTimer(warmup)
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
    return timer.steps * data.x.shape[1] / (timer.end - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resmasking_dropout1")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    add_options(parser)
    args = parser.parse_args()
    run = Run("bench_train", "images/s", args.include_emulated_bf16)
    data = RandomBatches(args.steps + args.warmup, args.batch, args.size)
    print(
        f"{args.arch} at {args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    reference = plain_fp32_loop(args.arch, data, args.warmup)
    run.set_reference("plain PyTorch loop, fp32", reference)
    for precision in ("32-true", "bf16-mixed"):
        for channels_last in (False, True):
            layout = "channels_last" if channels_last else "NCHW"
            name = f"Lightning {precision}, {layout}"
            if precision.startswith("bf16"):
                name = run.bf16_label(name)  # None: emulated here, skipped
                if name is None:
                    continue
            speed = lightning_loop(args.arch, data, args.warmup, precision, channels_last)
            run.add(name, speed)
    rows = [{**run.reference, "ratio": 1.0}, *run.settings]
    width = max(len(row["name"]) for row in rows) + 2
    print(f"{'configuration':<{width}}{'images/s':>10}{'vs plain fp32':>15}")
    for row in rows:
        print(f"{row['name']:<{width}}{row['value']:>10.2f}{row['ratio']:>14.2f}x")
    for note in run.skipped:
        print(f"skipped {note}")
    run.write_json(
        args.json,
        arch=args.arch,
        size=args.size,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
    )


if __name__ == "__main__":
    main()
