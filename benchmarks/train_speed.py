"""A Lightning callback that measures a real training run's images/s end to end.

    fer-train ... +callbacks.train_speed._target_=train_speed.TrainSpeed \\
        +callbacks.train_speed.path=speed.json +callbacks.train_speed.warmup_steps=10

(with ``benchmarks/`` on ``PYTHONPATH``; ``benchmarks/device_check.sh`` runs it so). The clock
starts when training step ``warmup_steps`` ends and stops when the epoch's last training step
ends (before validation), each after ``torch.cuda.synchronize()``: what lies between is
everything a training step costs, the DataLoader's workers, the copy to the GPU, the resize on
the device, forward, backward and the optimiser step. The JSON also gives the share of that
time the training loop waited for its next batch (the loader's part that the GPU did not
hide), and the model FLOP utilisation (3 x the forward FLOPs of one image x images/s over the
GPU's dense bf16 or TF32 peak, from bench_gpu's table).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from fer_lightning.models.zoo import describe


def _synchronize(module: pl.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


class TrainSpeed(pl.Callback):
    """Images/s of training, loader included, written to ``path`` as JSON when training ends."""

    def __init__(self, path: str, warmup_steps: int = 10) -> None:
        self.path = Path(path)
        self.warmup_steps = int(warmup_steps)
        self._started: float | None = None
        self._stopped: float | None = None
        self._last_end: float | None = None
        self.images = 0
        self.steps = 0
        self.batch_wait_s = 0.0

    def _last_step(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        return last_batch or (0 < trainer.max_steps <= trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._started is not None and self._stopped is None and self._last_end is not None:
            self.batch_wait_s += time.perf_counter() - self._last_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._stopped is not None:
            return
        if self._started is None:
            if trainer.global_step >= self.warmup_steps:
                _synchronize(pl_module)
                self._started = self._last_end = time.perf_counter()
            return
        self.images += int(batch[0].shape[0])
        self.steps += 1
        if self._last_step(trainer, batch_idx):
            _synchronize(pl_module)
            self._stopped = time.perf_counter()
        else:
            self._last_end = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.record(trainer, pl_module), indent=2) + "\n")

    def record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The figures, the run's settings, and ``error`` when too few steps were timed."""
        hparams = pl_module.hparams
        arch, size = str(hparams.get("arch")), int(hparams.get("input_size"))
        device = pl_module.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        precision = str(trainer.precision)
        loader = trainer.train_dataloader
        record: dict[str, Any] = {
            "device": name,
            "arch": arch,
            "input_size": size,
            "precision": precision,
            "channels_last": bool(hparams.get("channels_last")),
            "batch_size": getattr(loader, "batch_size", None),
            "num_workers": getattr(loader, "num_workers", None),
            "pin_memory": getattr(loader, "pin_memory", None),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "warmup_steps": self.warmup_steps,
            "timed_steps": self.steps,
            "images": self.images,
            "seconds": None,
            "images_per_s": None,
            "batch_wait_share": None,
            "forward_gflops_per_image": float(describe(arch, size)["gflops"]),
            "peak_tflops": None,
            "mfu": None,
        }
        if self._started is None or self._stopped is None or self.steps == 0:
            record["error"] = (
                f"no timed steps: the run trained {trainer.global_step} steps, the clock starts "
                f"after {self.warmup_steps}"
            )
            return record
        seconds = self._stopped - self._started
        images_per_s = self.images / seconds
        record.update(
            seconds=seconds,
            images_per_s=images_per_s,
            batch_wait_share=self.batch_wait_s / seconds,
        )
        if device.type == "cuda":
            from bench_gpu import peak_tflops, utilisation

            peaks = peak_tflops(device, None, None)
            peak = peaks["fp32" if precision.startswith("32") else "bf16"]
            record.update(
                peak_tflops=peak,
                mfu=utilisation(images_per_s, record["forward_gflops_per_image"], peak),
            )
        return record
