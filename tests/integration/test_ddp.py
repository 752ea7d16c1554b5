"""DDP as two spawned CPU processes over the synthetic DataModule (seconds to minutes)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl

from fer_lightning.data import FERDataModule
from tests.unit.test_data_module import _TinyClassifier


@pytest.mark.slow
def test_ddp_spawn_two_cpu_processes(tmp_path):
    dm = FERDataModule(
        "synthetic",
        root=str(tmp_path),
        batch_size=16,
        num_workers=1,
        persistent_workers=True,
        input_size=32,
        synthetic={"train_per_class": 4, "val_per_class": 2, "test_per_class": 2, "seed": 0},
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_TinyClassifier(), datamodule=dm)
    assert trainer.state.finished
