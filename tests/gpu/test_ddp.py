"""DDP on two GPUs (one process each, NCCL, SyncBatchNorm as conf/trainer/ddp.yaml sets it),
started by ``ddp_spawn`` (``ddp`` would start the pytest command again in each rank). The dry
run takes two CPU processes over gloo, without SyncBatchNorm, which needs GPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from tests.gpu.tier import ACCELERATOR, ON_CUDA, make_classifier, make_datamodule

pytestmark = pytest.mark.gpu

WORLD = 2
BATCHES = 2


class RankReport(pl.Callback):
    """Each rank writes what it trained on and a checksum of its weights to ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = pl_module.net
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "device": str(pl_module.device),
            "global_step": trainer.global_step,
            "sync_batchnorm": any(isinstance(m, nn.SyncBatchNorm) for m in net.modules()),
            "checksum": float(sum(p.detach().double().sum() for p in net.parameters())),
        }
        path = self.folder / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(report))


def test_ddp_on_two_devices(tmp_path, synthetic_root):
    if ON_CUDA and torch.cuda.device_count() < WORLD:
        pytest.skip(f"DDP needs {WORLD} CUDA GPUs; this machine has {torch.cuda.device_count()}")
    trainer = pl.Trainer(
        accelerator=ACCELERATOR,
        devices=WORLD,
        strategy="ddp_spawn",
        sync_batchnorm=ON_CUDA,
        precision="bf16-mixed",
        max_epochs=1,
        limit_train_batches=BATCHES,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[RankReport(tmp_path)],
    )
    datamodule = make_datamodule(synthetic_root, num_workers=1)
    trainer.fit(make_classifier("resnet18", channels_last=ON_CUDA), datamodule=datamodule)

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["world_size"] for r in reports] == [WORLD] * WORLD
    assert [r["global_step"] for r in reports] == [BATCHES] * WORLD
    expected = [f"cuda:{r}" for r in range(WORLD)] if ON_CUDA else ["cpu"] * WORLD
    assert [r["device"] for r in reports] == expected
    assert [r["sync_batchnorm"] for r in reports] == [ON_CUDA] * WORLD
    # DDP kept the replicas equal: the gradients were averaged before every step.
    assert reports[0]["checksum"] == pytest.approx(reports[1]["checksum"], rel=1e-6)
