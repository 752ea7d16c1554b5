"""A checkpoint written on the GPU: resumed there (``ckpt_path=``) and loaded by the project's
loaders on a machine without CUDA."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from fer_lightning.labels import EMOTIONS
from fer_lightning.models.checkpoints import read_checkpoint
from fer_lightning.training.checkpoint_io import (
    AtomicCheckpointIO,
    ResumeTarget,
    check_resume_checkpoint,
)
from tests.gpu.tier import DEVICE, ON_CUDA, SIZE, make_classifier, make_datamodule, make_trainer

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
BATCHES = 2
# What a machine without a GPU runs: the published-format loader, then one forward pass.
LOAD_WITHOUT_CUDA = """
import json, sys, torch
from fer_lightning.models.checkpoints import load_model
net = load_model(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    logits = net(x)
print(json.dumps({
    "cuda_available": torch.cuda.is_available(),
    "devices": sorted({p.device.type for p in net.parameters()}),
    "arch": net.arch, "input_size": net.input_size, "label_names": list(net.label_names),
    "logits": logits.tolist(),
}))
"""


class StartWeights(Callback):
    """The head's weights when training starts (after a resume has restored them)."""

    def __init__(self) -> None:
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.weights = {
            name: p.detach().cpu().clone()
            for name, p in pl_module.net.named_parameters()
            if name.startswith("fc")
        }


def last_checkpoint(folder: Path) -> ModelCheckpoint:
    """checkpoints/last.ckpt after every epoch, as conf/callbacks/default.yaml's."""
    return ModelCheckpoint(
        dirpath=folder,
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        enable_version_counter=False,
    )


def test_checkpoint_saved_on_the_device_resumes_there_and_loads_without_cuda(
    tmp_path, synthetic_root
):
    folder = tmp_path / "checkpoints"
    datamodule = make_datamodule(synthetic_root)
    first = make_classifier("resnet18")
    saving = make_trainer(
        tmp_path,
        "16-mixed",
        BATCHES,
        callbacks=[last_checkpoint(folder)],
        enable_checkpointing=True,
        plugins=[AtomicCheckpointIO()],
        max_steps=-1,  # the epochs decide, as in fer-train
    )
    saving.fit(first, datamodule=datamodule)
    path = folder / "last.ckpt"

    # Written from the device: its tensors say so, and only a map_location moves them.
    raw = torch.load(path, weights_only=True)
    assert {t.device.type for t in raw["state_dict"].values()} == {DEVICE.type}
    if ON_CUDA:
        # 16-mixed: the gradient scaler's state travels with the checkpoint.
        assert raw["MixedPrecision"]["scale"] > 0
    mapped = read_checkpoint(path)
    assert {t.device.type for t in mapped["state_dict"].values()} == {"cpu"}
    check_resume_checkpoint(path, ResumeTarget("resnet18", 7, SIZE, EMOTIONS, "synthetic"))
    first_epoch = shutil.copy(path, tmp_path / "first_epoch.ckpt")

    # Resumed on the device for a second epoch, writing into the same folder (ckpt_path=last).
    start = StartWeights()
    resuming = make_trainer(
        tmp_path,
        "16-mixed",
        BATCHES,
        epochs=2,
        callbacks=[start, last_checkpoint(folder)],
        enable_checkpointing=True,
        plugins=[AtomicCheckpointIO()],
        max_steps=-1,
    )
    resuming.fit(make_classifier("resnet18"), datamodule=datamodule, ckpt_path=path)
    assert resuming.current_epoch == 2 and resuming.global_step == 2 * BATCHES
    saved_head = {k.removeprefix("net."): v for k, v in mapped["state_dict"].items()}
    for name, weight in start.weights.items():
        assert torch.equal(weight, saved_head[name]), name
    optimizer_state = resuming.optimizers[0].state.values()
    assert optimizer_state and all(s["exp_avg"].device.type == DEVICE.type for s in optimizer_state)
    if ON_CUDA:
        scaler = resuming.precision_plugin.scaler
        # Restored, then only lowered by overflows: two steps are far from a growth interval.
        assert scaler.get_scale() <= raw["MixedPrecision"]["scale"]
    assert read_checkpoint(path)["global_step"] == 2 * BATCHES

    # The first run's checkpoint on a machine that sees no GPU, through load_model.
    reference = copy.deepcopy(first.net).cpu().float().eval()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(x)
    torch.save(x, tmp_path / "x.pt")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_CUDA, first_epoch, str(tmp_path / "x.pt")],
        cwd=ROOT,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["cuda_available"] is False and loaded["devices"] == ["cpu"]
    assert (loaded["arch"], loaded["input_size"]) == ("resnet18", SIZE)
    assert loaded["label_names"] == list(EMOTIONS)
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=1e-4, atol=1e-4)
