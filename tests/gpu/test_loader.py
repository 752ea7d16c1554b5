"""The loader's pinned memory and the DataModule's resize on the GPU, outside a Trainer."""

from __future__ import annotations

import pytest
import torch

from fer_lightning.faces.transforms import to_model_input
from tests.gpu.tier import BATCH, DEVICE, SIZE, cuda_only, make_datamodule

pytestmark = pytest.mark.gpu


def test_the_loader_pins_batches_and_the_datamodule_resizes_them_on_the_device(synthetic_root):
    datamodule = make_datamodule(synthetic_root, num_workers=2)
    datamodule.setup("fit")
    faces, labels = next(iter(datamodule.train_dataloader()))
    assert faces.shape == (BATCH, 48, 48) and faces.dtype == torch.uint8
    x, y = datamodule.on_after_batch_transfer(
        (faces.to(DEVICE, non_blocking=True), labels.to(DEVICE, non_blocking=True)), 0
    )
    assert x.device.type == DEVICE.type and y.device.type == DEVICE.type
    assert x.shape == (BATCH, 3, SIZE, SIZE) and x.dtype == torch.float32
    # The GPU resizes in float, the CPU in uint8 with fixed-point weights: the two differ by
    # at most one grey level (measured: 1.0003 at 224 px).
    on_cpu = to_model_input(faces, SIZE)
    assert float((x.cpu() - on_cpu).abs().max()) <= 1.5 / 255
    cuda_only("pinned memory")
    assert datamodule.pin_memory and faces.is_pinned() and labels.is_pinned()
