"""Training on the GPU through the project's LightningModule and DataModule: both
architectures in bf16-mixed and 16-mixed (with its gradient scaler), channels-last or not, the
loader's pinned memory and the on-device resize; and torch.compile of the training step."""

from __future__ import annotations

import math

import pytest
import torch

from fer_lightning.models.checkpoints import load_model
from tests.gpu.tier import (
    AUTOCAST_DTYPES,
    BATCH,
    DEVICE,
    ON_CUDA,
    SIZE,
    BatchProbe,
    changed,
    head_weights,
    make_classifier,
    make_datamodule,
    make_trainer,
)

pytestmark = pytest.mark.gpu

STEPS = 3
# Each architecture in both precisions and both memory layouts.
CASES = [
    pytest.param("resmasking_dropout1", "bf16-mixed", True, id="resmasking_dropout1-bf16-nhwc"),
    pytest.param("resmasking_dropout1", "16-mixed", False, id="resmasking_dropout1-fp16"),
    pytest.param("resnet18", "bf16-mixed", False, id="resnet18-bf16"),
    pytest.param("resnet18", "16-mixed", True, id="resnet18-fp16-nhwc"),
]
# GradScaler's first scale (torch.amp.GradScaler(init_scale=2.0**16)).
INITIAL_SCALE = 2.0**16


def assert_model_inputs(records, count: int | None = None) -> None:
    """Each batch reached the network on the device, resized there to (N, 3, S, S) float32 in
    [0, 1], with its targets beside it."""
    assert records and (count is None or len(records) == count)
    for record in records:
        assert record.device == DEVICE.type and record.targets_device == DEVICE.type
        assert record.shape == (BATCH, 3, SIZE, SIZE)
        assert record.dtype == torch.float32
        assert 0.0 <= record.low <= record.high <= 1.0


@pytest.mark.parametrize(("arch", "precision", "channels_last"), CASES)
def test_a_few_training_steps_on_the_device(
    tmp_path, synthetic_root, arch, precision, channels_last
):
    datamodule = make_datamodule(synthetic_root)
    module = make_classifier(arch, channels_last=channels_last)
    before = head_weights(module)
    probe = BatchProbe()
    trainer = make_trainer(tmp_path, precision, STEPS, callbacks=[probe])
    trainer.fit(module, datamodule=datamodule)

    assert trainer.global_step == STEPS
    assert_model_inputs(probe.train, STEPS)
    assert_model_inputs(probe.val)
    assert len(probe.losses) == STEPS and all(math.isfinite(loss) for loss in probe.losses)
    assert {p.device.type for p in module.parameters()} == {DEVICE.type}
    # Autocast ran the network in the precision asked for (the logits come out in it).
    assert probe.output_dtypes == {AUTOCAST_DTYPES[str(trainer.precision)]}
    # Channels-last: the weights and the activations the convolutions see.
    assert probe.first_conv_channels_last == {channels_last}
    for name, p in module.net.named_parameters():
        if p.dim() == 4 and p.shape[-1] > 1:
            assert p.is_contiguous(memory_format=torch.channels_last) == channels_last, name
    # The loader pinned its batches for the copy to the GPU.
    assert trainer.train_dataloader.pin_memory == ON_CUDA

    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if precision == "16-mixed" and ON_CUDA:
        assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
        # The scaler stepped the optimiser, or found overflowing gradients and lowered its
        # scale (skipping those steps): either way it sat between backward and the step.
        assert changed(before, head_weights(module)) or scaler.get_scale() < INITIAL_SCALE
    else:
        assert scaler is None  # bf16 needs no loss scaling
        assert changed(before, head_weights(module))


def test_compiled_training_step(tmp_path, synthetic_root, monkeypatch):
    """model.compile=true: the network compiled in place by torch.compile (Inductor), trained a
    few steps in bf16-mixed and channels-last; its checkpoint keeps the plain keys."""
    if not ON_CUDA:
        pytest.skip("torch.compile: over a minute of Inductor's C++ build on the CPU; CUDA only")
    # Where Inductor writes the code it generates: a fresh folder, to see that it compiled.
    inductor_cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache))
    datamodule = make_datamodule(synthetic_root)
    module = make_classifier("resnet18", channels_last=True, compile=True)
    before = head_weights(module)
    probe = BatchProbe(hooks=False)
    # No validation: eval mode would compile a second graph, doubling the compile time.
    trainer = make_trainer(tmp_path, "bf16-mixed", STEPS, callbacks=[probe], limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)

    assert trainer.global_step == STEPS
    assert_model_inputs(probe.train, STEPS)
    assert all(math.isfinite(loss) for loss in probe.losses)
    assert changed(before, head_weights(module))
    assert list(inductor_cache.rglob("*.py")), "Inductor generated no code: nothing compiled"
    # Compiled in place: the checkpoint's keys are the plain network's, and it loads.
    checkpoint = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(checkpoint)
    assert not [key for key in module.state_dict() if "_orig_mod" in key]
    loaded = load_model(checkpoint)
    assert loaded.arch == "resnet18" and loaded.input_size == SIZE
