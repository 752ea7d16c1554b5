"""Lightning callbacks of this project."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)

VAL_KEYS = ("val/loss", "val/acc", "val/f1_macro", "val/acc_best")
# The order of the metrics in each epoch's log line.
LOG_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc", "val/f1_macro", "val/acc_best")


class EpochHistory(pl.Callback):
    """One row of metrics per epoch (for curves.png, results.json and one line of the log),
    kept in checkpoints.

    The row is taken at the end of each validation, which Lightning runs before
    ``ModelCheckpoint`` saves, so a resumed run's history holds every epoch it has checkpointed.
    Training loss and accuracy are read from the module's running metrics for the epoch; ``lr``
    is the learning rate the epoch trained with (read when it starts: epoch-wise schedulers
    have already stepped by the time validation ends). Each row is also logged as one line
    (``epoch 3 (4/30): train/loss 0.8123 ... lr 1.00e-04 (41.2 s)``), which Hydra writes to the
    run's train.log.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._epoch_lr: float | None = None
        self._epoch_start: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_lr = _current_lr(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row: dict[str, float] = {"epoch": float(trainer.current_epoch)}
        train_loss = getattr(pl_module, "train_loss", None)
        train_metrics = getattr(pl_module, "train_metrics", None)
        if train_loss is not None and train_loss.update_count:
            row["train/loss"] = float(train_loss.compute())
        if train_metrics is not None and any(m.update_count for m in train_metrics.values()):
            row.update({k: float(v) for k, v in train_metrics.compute().items()})
        metrics = trainer.callback_metrics
        row.update({key: float(metrics[key]) for key in VAL_KEYS if key in metrics})
        lr = self._epoch_lr if self._epoch_lr is not None else _current_lr(trainer)
        if lr is not None:
            row["lr"] = lr
        # A repeated validation of the same epoch (mid-epoch checks) replaces the earlier row.
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:
            seconds = None
            if self._epoch_start is not None:
                seconds = time.perf_counter() - self._epoch_start
            log.info("%s", format_epoch(row, trainer.max_epochs, seconds))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state_dict.get("rows", [])]


def _current_lr(trainer: pl.Trainer) -> float | None:
    if not trainer.optimizers:
        return None
    return float(trainer.optimizers[0].param_groups[0]["lr"])


def format_epoch(
    row: dict[str, float], max_epochs: int | None = None, seconds: float | None = None
) -> str:
    """``epoch 3 (4/30): train/loss 0.8123 train/acc 0.7012 ... lr 1.00e-04 (41.2 s)``: the
    epoch number counts from 0, as in the checkpoint names and Lightning's progress bar."""
    epoch = int(row["epoch"])
    count = f" ({epoch + 1}/{max_epochs})" if max_epochs is not None and max_epochs > 0 else ""
    others = [key for key in row if key not in (*LOG_KEYS, "epoch", "lr")]
    parts = [f"{key} {row[key]:.4f}" for key in (*LOG_KEYS, *others) if key in row]
    if "lr" in row:
        parts.append(f"lr {row['lr']:.2e}")
    text = f"epoch {epoch}{count}: " + " ".join(parts)
    if seconds is not None and math.isfinite(seconds):
        text += f" ({seconds:.1f} s)"
    return text
