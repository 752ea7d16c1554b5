"""Score a network on a test split through the LightningModule's test path, on one process.

The one way this project scores a split (after training, and in ``fer-eval``): a single-device
``Trainer.test`` over the DataModule's test loader, so every test image counts exactly once
whatever the training strategy, with a progress bar and ``limit_test_batches`` honoured.
"""

from __future__ import annotations

import copy
import logging

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from torch import nn

from fer_lightning.models import num_classes_of
from fer_lightning.runtime import lightning_precision, resolve_device
from fer_lightning.training.console import silence_lightning_tips
from fer_lightning.training.module import FERClassifier
from fer_lightning.training.scoring import Predictions

log = logging.getLogger(__name__)


def evaluate_network(
    net: nn.Module,
    datamodule: pl.LightningDataModule,
    *,
    input_size: int,
    tta: bool = True,
    accelerator: str = "auto",
    precision: str = "32-true",
    limit_test_batches: int | float | None = None,
    progress: bool = True,
    split: str = "test",
) -> Predictions:
    """Softmax outputs (and logits) of ``net`` over ``datamodule``'s test split, or its
    validation split for ``split="val"`` (plain and, with ``tta``, averaged over the 10
    test-time augmentation views), with the faces resized to ``input_size``; the caller's
    ``datamodule`` keeps its own ``input_size`` (a shallow copy runs at the network's size).
    ``precision="auto"`` takes what the device runs natively."""
    if split not in ("test", "val"):
        raise ValueError(f"split must be 'test' or 'val', not {split!r}.")
    module = FERClassifier(
        arch=str(getattr(net, "arch", "unknown")),
        num_classes=num_classes_of(net),
        input_size=input_size,
        tta=tta,
        network=net,
    )
    if getattr(datamodule, "input_size", None) != input_size or split == "val":
        datamodule = copy.copy(datamodule)
        datamodule.input_size = input_size
        if split == "val":
            # The test path over the validation faces (fitting a temperature).
            datamodule.test_dataloader = datamodule.val_dataloader
    device = resolve_device("cpu" if accelerator == "cpu" else "auto")
    precision = lightning_precision(precision, device)
    silence_lightning_tips()  # fer-eval's console says what it scores, not Lightning's adverts
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[TQDMProgressBar(refresh_rate=10)] if progress else None,
        limit_test_batches=limit_test_batches,
    )
    trainer.test(module, datamodule=datamodule, verbose=False)
    if module.test_predictions is None:
        raise ValueError(f"The {split} split gave no batches (limit_test_batches=0?).")
    return module.test_predictions
