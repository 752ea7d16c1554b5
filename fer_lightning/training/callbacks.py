"""Lightning callbacks of this project."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

VAL_KEYS = ("val/loss", "val/acc", "val/f1_macro", "val/acc_best")


class EpochHistory(pl.Callback):
    """One row of metrics per epoch (for curves.png and results.json), kept in checkpoints.

    The row is taken at the end of each validation, which Lightning runs before
    ``ModelCheckpoint`` saves, so a resumed run's history holds every epoch it has checkpointed.
    Training loss and accuracy are read from the module's running metrics for the epoch.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

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
        if trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        # A repeated validation of the same epoch (mid-epoch checks) replaces the earlier row.
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state_dict.get("rows", [])]
