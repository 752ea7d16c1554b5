"""Does the network learn, and does the Lightning pipeline learn like a plain PyTorch loop?

    python benchmarks/learning_check.py [--arch resmasking_dropout1] [--size 32] [--steps 300]
                                        [--lr 1e-3] [--eval-every 50] [--json learning.json]

Both runs train the same architecture from the same initial weights on the same synthetic
faces, batches (same order), augmentation (none), optimiser (AdamW, PyTorch's fused kernel in
both) and learning rate (cosine decay to 0 over the run, stepped every step), for the same
number of steps; both are scored on the same validation
split every ``--eval-every`` steps. The Lightning run goes through this project's DataModule,
LightningModule and Trainer (fp32); the plain loop is textbook PyTorch: ``torch.optim`` and
``F.cross_entropy`` over the same network (with the CPU convolutions the LightningModule
uses on the CPU). Both draw the same dropout mask at each step. Chance is 1/7.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from fer_lightning.data import FERDataModule
from fer_lightning.faces.transforms import to_model_input
from fer_lightning.models import create_model
from fer_lightning.models.cpu_convs import use_cpu_convs
from fer_lightning.training.module import FERClassifier

DROPOUT_SEED = 1000  # + the step: both runs draw the same dropout mask at every step


def make_datamodule(root: Path, args: argparse.Namespace) -> FERDataModule:
    datamodule = FERDataModule(
        "synthetic",
        str(root),
        batch_size=args.batch,
        num_workers=0,
        input_size=args.size,
        augment=None,
        drop_last=True,
        synthetic={
            "train_per_class": args.train_per_class,
            "val_per_class": args.val_per_class,
            "test_per_class": 1,
            "seed": 0,
        },
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def batches(datamodule: FERDataModule, steps: int, seed: int):
    """The training batches of ``steps`` steps, epoch after epoch, in a seeded order."""
    torch.manual_seed(seed)
    done = 0
    while done < steps:
        for faces, labels in datamodule.train_dataloader():
            if done == steps:
                return
            yield faces, labels
            done += 1


@torch.no_grad()
def accuracy(net: torch.nn.Module, datamodule: FERDataModule, size: int) -> float:
    net.eval()
    right = total = 0
    for faces, labels in datamodule.val_dataloader():
        predicted = net(to_model_input(faces, size)).argmax(1)
        right += int((predicted == labels).sum())
        total += labels.numel()
    return right / total


def plain_loop(args: argparse.Namespace, datamodule: FERDataModule, initial: dict) -> dict:
    """{step: validation accuracy} of the textbook loop."""
    net = create_model(args.arch)
    net.load_state_dict(initial)
    use_cpu_convs(net)  # the network as the LightningModule builds it on the CPU
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4, fused=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.steps)
    curve = {}
    for step, (faces, labels) in enumerate(batches(datamodule, args.steps, seed=1), start=1):
        torch.manual_seed(DROPOUT_SEED + step)  # the same dropout masks as the Lightning run
        loss = F.cross_entropy(net(to_model_input(faces, args.size)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve[step] = accuracy(net, datamodule, args.size)
            net.train()
            print(f"  plain loop, step {step}: {curve[step]:.3f}", flush=True)
    return curve


class FixedBatches(pl.LightningDataModule):
    """The DataModule's own batches in the order the plain loop sees them."""

    def __init__(self, datamodule: FERDataModule, steps: int) -> None:
        super().__init__()
        self.datamodule, self.steps = datamodule, steps

    def train_dataloader(self) -> DataLoader:
        # batch_size=None: the items already are batches.
        return DataLoader(list(batches(self.datamodule, self.steps, seed=1)), batch_size=None)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        return self.datamodule.on_after_batch_transfer(batch, dataloader_idx)


class Scorer(pl.Callback):
    """The plain loop's dropout seeds; validation accuracy every ``--eval-every`` steps."""

    def __init__(self, datamodule: FERDataModule, args: argparse.Namespace) -> None:
        self.datamodule, self.args, self.curve = datamodule, args, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        torch.manual_seed(DROPOUT_SEED + trainer.global_step + 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.args.eval_every == 0 or step == self.args.steps:
            self.curve[step] = accuracy(pl_module.net, self.datamodule, self.args.size)
            pl_module.net.train()
            print(f"  Lightning, step {step}: {self.curve[step]:.3f}", flush=True)


def lightning_run(args: argparse.Namespace, datamodule: FERDataModule, initial: dict) -> dict:
    """{step: validation accuracy} of this project's LightningModule under ``Trainer.fit``."""
    module = FERClassifier(
        arch=args.arch,
        input_size=args.size,
        optimizer={
            "_target_": "torch.optim.AdamW",
            "lr": args.lr,
            "weight_decay": 1e-4,
            "fused": True,
        },
        scheduler={
            "scheduler": {
                "_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
                "T_max": args.steps,
            },
            "interval": "step",
        },
        tta=False,
    )
    module.net.load_state_dict(initial)
    scorer = Scorer(datamodule, args)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=args.steps,
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[scorer],
    )
    trainer.fit(module, datamodule=FixedBatches(datamodule, args.steps))
    return scorer.curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resmasking_dropout1")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--train-per-class", type=int, default=120)
    parser.add_argument("--val-per-class", type=int, default=30)
    parser.add_argument("--data", default="/tmp/fer_learning_check")
    parser.add_argument(
        "--runs", default="plain_loop,lightning", help="which runs (a pilot may take one)"
    )
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in create_model(args.arch).state_dict().items()}
    datamodule = make_datamodule(Path(args.data), args)
    figures: dict[str, object] = {"settings": vars(args), "chance": 1 / 7}
    figures["load_average_start"] = os.getloadavg()[0]
    runs = {"plain_loop": plain_loop, "lightning": lightning_run}
    for name in args.runs.split(","):
        run = runs[name]
        start = time.perf_counter()
        curve = run(args, datamodule, initial)
        figures[f"{name}_curve"] = curve
        figures[f"{name}_val_acc"] = curve[args.steps]
        figures[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        print(
            f"{name}: validation accuracy {curve[args.steps]:.3f} after {args.steps} steps "
            f"({figures[f'{name}_seconds']} s)",
            flush=True,
        )
    if "plain_loop_val_acc" in figures and "lightning_val_acc" in figures:
        figures["difference_points"] = 100 * abs(
            figures["plain_loop_val_acc"] - figures["lightning_val_acc"]
        )
    figures["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
