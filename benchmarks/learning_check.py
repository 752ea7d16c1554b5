"""Does the network learn, and does the Lightning pipeline learn like a plain PyTorch loop?

    python benchmarks/learning_check.py [--arch resmasking_dropout1] [--size 32] [--steps 120]
                                        [--lr 3e-4] [--json learning.json]

Both runs train the same architecture from the same initial weights on the same synthetic
faces, batches (same order), augmentation (none), optimiser and learning rate, for the same
number of steps; then both are scored on the same validation split. The Lightning run goes
through this project's DataModule, LightningModule and Trainer (fp32); the plain loop through
``torch.optim`` and ``F.cross_entropy`` alone. Chance is 1/7.
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
from fer_lightning.training.module import FERClassifier


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


def plain_loop(args: argparse.Namespace, datamodule: FERDataModule, initial: dict) -> float:
    net = create_model(args.arch)
    net.load_state_dict(initial)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4, foreach=True)
    for faces, labels in batches(datamodule, args.steps, seed=1):
        loss = F.cross_entropy(net(to_model_input(faces, args.size)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return accuracy(net, datamodule, args.size)


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


def lightning_run(args: argparse.Namespace, datamodule: FERDataModule, initial: dict) -> float:
    module = FERClassifier(
        arch=args.arch,
        input_size=args.size,
        optimizer={
            "_target_": "torch.optim.AdamW",
            "lr": args.lr,
            "weight_decay": 1e-4,
            "foreach": True,
        },
        scheduler=None,
        tta=False,
    )
    module.net.load_state_dict(initial)
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
    )
    trainer.fit(module, datamodule=FixedBatches(datamodule, args.steps))
    return accuracy(module.net, datamodule, args.size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resmasking_dropout1")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--train-per-class", type=int, default=120)
    parser.add_argument("--val-per-class", type=int, default=30)
    parser.add_argument("--data", default="/tmp/fer_learning_check")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in create_model(args.arch).state_dict().items()}
    datamodule = make_datamodule(Path(args.data), args)
    figures: dict[str, object] = {"settings": vars(args), "chance": 1 / 7}
    for name, run in (("plain_loop", plain_loop), ("lightning", lightning_run)):
        start = time.perf_counter()
        figures[f"{name}_val_acc"] = run(args, datamodule, initial)
        figures[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        print(
            f"{name}: validation accuracy {figures[f'{name}_val_acc']:.3f} "
            f"after {args.steps} steps ({figures[f'{name}_seconds']} s)",
            flush=True,
        )
    figures["difference_points"] = 100 * abs(
        figures["plain_loop_val_acc"] - figures["lightning_val_acc"]
    )
    figures["load_average"] = os.getloadavg()[0]
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
