"""What the gpu tier runs on, and the small pieces its tests share.

The tier runs on CUDA (``FER_GPU_TIER_DEVICE`` unset or ``cuda``). With
``FER_GPU_TIER_DEVICE=cpu`` it is a dry run on the CPU that checks the tests' own code: what
only a GPU has (the gradient scaler of 16-mixed, pinned memory, CUDA tensors, two GPUs) is not
asserted there, and the tests that need CUDA alone skip with a reason.

Sizes are small (batch 8; 64 px on the GPU, 32 px in the dry run) so that the tier takes a few
minutes on a GPU: it checks that every CUDA path runs and gives the right numbers, not speed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from fer_lightning.cli.config import CONFIG_DIR
from fer_lightning.data import FERDataModule
from fer_lightning.training.module import FERClassifier
from tests.helpers.data import paper_augment

DEVICE_VARIABLE = "FER_GPU_TIER_DEVICE"
DEVICE_CHOICES = ("cuda", "cpu")
NO_CUDA_REASON = (
    "no CUDA GPU here: the gpu tier needs one (FER_GPU_TIER_DEVICE=cpu dry-runs it on the CPU)"
)


def requested_device() -> str:
    """``cuda`` (the default) or ``cpu`` (the dry run), from ``FER_GPU_TIER_DEVICE``."""
    value = os.environ.get(DEVICE_VARIABLE, "").strip().lower() or "cuda"
    if value not in DEVICE_CHOICES:
        raise pytest.UsageError(
            f"{DEVICE_VARIABLE}={value!r}: use cuda (the default) or cpu (a dry run of the tier)."
        )
    return value


DEVICE = torch.device(requested_device())
ON_CUDA = DEVICE.type == "cuda"
ACCELERATOR = "gpu" if ON_CUDA else "cpu"
# Network input side: the Residual Masking Network at 64 px on the GPU; 32 px keeps the CPU dry
# run short.
SIZE = 64 if ON_CUDA else 32
BATCH = 8
# Synthetic splits whose sizes are multiples of the batch: every batch is full, so that a
# compiled network sees one shape.
SMALL_DATA = {"train_per_class": 8, "val_per_class": 8, "test_per_class": 8, "seed": 0}
# Enough faces for a ResNet-18 to learn something in a few epochs (the recogniser's checks).
LEARNING_DATA = {"train_per_class": 48, "val_per_class": 8, "test_per_class": 8, "seed": 1}
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def cuda_only(what: str) -> None:
    """Skip the rest of a test in the dry run: ``what`` exists on CUDA only."""
    if not ON_CUDA:
        pytest.skip(f"{what}: CUDA only (this is the dry run on the CPU)")


def trainer_precision(requested: str) -> str:
    """``requested`` on CUDA; in the dry run 16-mixed becomes bf16-mixed, as Lightning makes it
    on the CPU anyway (with a warning), since fp16 autocast is a GPU path."""
    return "bf16-mixed" if requested == "16-mixed" and not ON_CUDA else requested


def paper_optimizer(**changes: Any) -> dict[str, Any]:
    """conf/optimizer/radam.yaml as fer-train passes it to the module (the project's RAdam)."""
    settings = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "optimizer" / "radam.yaml"))
    return {**settings, **changes}


def make_datamodule(
    root: Path, data: dict[str, int] = SMALL_DATA, batch_size: int = BATCH, **options: Any
) -> FERDataModule:
    """The synthetic DataModule at the tier's size, with the paper's augmentation and two
    loader workers (pinned memory on CUDA, as conf/trainer/gpu.yaml users set it)."""
    settings = {"num_workers": 2, "pin_memory": ON_CUDA, **options}
    return FERDataModule(
        "synthetic",
        root=str(root),
        batch_size=batch_size,
        input_size=SIZE,
        synthetic=dict(data),
        augment=paper_augment(),
        **settings,
    )


def make_classifier(arch: str, **options: Any) -> FERClassifier:
    """The LightningModule as fer-train builds it for ``data=synthetic`` at the tier's size."""
    settings = {
        "optimizer": paper_optimizer(),
        "tta": False,
        "training_data": {"dataset": "synthetic", "synthetic": True},
        **options,
    }
    return FERClassifier(arch=arch, input_size=SIZE, **settings)


def make_trainer(
    root_dir: Path,
    precision: str,
    batches: int,
    epochs: int = 1,
    callbacks: list[pl.Callback] | None = None,
    **options: Any,
) -> pl.Trainer:
    """A single-device Trainer on the tier's device: ``batches`` training batches per epoch,
    one validation batch, no logger, checkpoints or progress bar unless ``options`` say so."""
    settings = {
        "accelerator": ACCELERATOR,
        "devices": 1,
        "precision": trainer_precision(precision),
        "max_epochs": epochs,
        "max_steps": batches * epochs,
        "limit_train_batches": batches,
        "limit_val_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(root_dir),
        "callbacks": callbacks or [],
        **options,
    }
    return pl.Trainer(**settings)


@dataclass
class BatchRecord:
    """What reached the network: the model input's device, shape, dtype and value range, and
    the targets' device."""

    device: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    low: float
    high: float
    targets_device: str

    @classmethod
    def of(cls, batch: tuple[Tensor, Tensor]) -> BatchRecord:
        x, y = batch
        return cls(
            x.device.type, tuple(x.shape), x.dtype, float(x.min()), float(x.max()), y.device.type
        )


@dataclass
class BatchProbe(pl.Callback):
    """Records every training and validation batch as the LightningModule receives it (after
    the transfer and the DataModule's on-device resize) and the training losses; with
    ``hooks``, also the dtype of the network's output (autocast at work) and whether the
    first convolution's input is channels-last."""

    hooks: bool = True
    train: list[BatchRecord] = field(default_factory=list)
    val: list[BatchRecord] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    output_dtypes: set[torch.dtype] = field(default_factory=set)
    first_conv_channels_last: set[bool] = field(default_factory=set)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.hooks:
            return
        net = pl_module.net
        net.register_forward_hook(lambda _module, _args, out: self.output_dtypes.add(out.dtype))
        first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
        first_conv.register_forward_pre_hook(
            lambda _module, args: self.first_conv_channels_last.add(
                args[0].is_contiguous(memory_format=torch.channels_last)
            )
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append(BatchRecord.of(batch))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_validation_batch_start(
        self, trainer, pl_module, batch, batch_idx, dataloader_idx: int = 0
    ) -> None:
        self.val.append(BatchRecord.of(batch))


def head_weights(module: FERClassifier) -> dict[str, Tensor]:
    """Copies of the classifier head's parameters (the head always gets a gradient)."""
    return {name: p.detach().clone() for name, p in module.net.named_parameters() if "fc" in name}


def changed(before: dict[str, Tensor], after: dict[str, Tensor]) -> bool:
    return any(not torch.equal(before[name], after[name]) for name in before)
