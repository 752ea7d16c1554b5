"""A network trained on the GPU, used there: the test path with test-time augmentation, the
recogniser at ``precision=auto`` against fp32 on the CPU, and ONNX export from the GPU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_lightning.faces.transforms import to_model_input
from fer_lightning.inference.onnx_export import PARITY_TOLERANCE, export_onnx, onnx_parity
from fer_lightning.inference.recognizer import EmotionRecognizer
from fer_lightning.models.checkpoints import load_model
from fer_lightning.runtime import has_native_bf16
from fer_lightning.training.evaluate import evaluate_network
from tests.gpu.tier import (
    DEVICE,
    LEARNING_DATA,
    ON_CUDA,
    SIZE,
    make_classifier,
    make_datamodule,
    make_trainer,
    paper_optimizer,
)

pytestmark = pytest.mark.gpu

# bf16 (8 bits of mantissa) against fp32: probabilities within this, and the same top-1 class
# wherever fp32's top two classes are further apart than this.
BF16_PROBABILITY_TOLERANCE = 0.05
# cuDNN runs fp32 convolutions in TF32 (10 bits of mantissa) by default; ONNX Runtime on the
# CPU in fp32: logits within this share of their largest magnitude.
TF32_LOGIT_TOLERANCE = 0.02
# Share of faces with the same class in bf16 on the device as in fp32 on the CPU.
MIN_TOP1_AGREEMENT = 0.9


@dataclass
class Trained:
    """A ResNet-18 trained on the device and saved there, with its datamodule and the test
    faces, (N, 48, 48) uint8."""

    checkpoint: Path
    datamodule: object
    faces: np.ndarray


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_root) -> Trained:
    folder = tmp_path_factory.mktemp("trained")
    datamodule = make_datamodule(synthetic_root, LEARNING_DATA, batch_size=32)
    # A higher learning rate than the paper's, so that a few epochs separate the classes.
    module = make_classifier("resnet18", optimizer=paper_optimizer(lr=1e-3))
    trainer = make_trainer(folder, "bf16-mixed", 10, epochs=3, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    checkpoint = folder / "trained.ckpt"
    trainer.save_checkpoint(checkpoint)
    faces = np.concatenate([f.numpy() for f, _ in datamodule.test_dataloader()])
    return Trained(checkpoint, datamodule, faces)


def top_two_margin(probs: np.ndarray) -> np.ndarray:
    ordered = np.sort(probs, axis=1)
    return ordered[:, -1] - ordered[:, -2]


def test_test_path_with_tta_on_the_device_agrees_with_the_cpu(trained):
    net = load_model(trained.checkpoint)
    on_device = evaluate_network(
        net,
        trained.datamodule,
        input_size=SIZE,
        accelerator="gpu" if ON_CUDA else "cpu",
        precision="auto",
        progress=False,
    )
    on_cpu = evaluate_network(
        load_model(trained.checkpoint),
        trained.datamodule,
        input_size=SIZE,
        accelerator="cpu",
        precision="32-true",
        progress=False,
    )
    assert len(on_device.labels) == len(trained.faces)
    assert torch.equal(on_device.labels, on_cpu.labels)
    for got, expected in ((on_device.probs, on_cpu.probs), (on_device.probs_tta, on_cpu.probs_tta)):
        assert got.device.type == "cpu" and got.shape == expected.shape
        torch.testing.assert_close(got.sum(1), torch.ones(len(got)), atol=1e-4, rtol=0)
        assert float((got - expected).abs().max()) < BF16_PROBABILITY_TOLERANCE


def test_recognizer_on_the_device_at_auto_precision_agrees_with_cpu_fp32(trained):
    on_device = EmotionRecognizer.from_checkpoint(
        trained.checkpoint, device=DEVICE.type, detector="none", precision="auto"
    )
    reference = EmotionRecognizer.from_checkpoint(
        trained.checkpoint, device="cpu", detector="none", precision="fp32"
    )
    classifier = on_device.classifier
    # auto: bf16 where it is native (every GPU from Ampere on; this CPU in the dry run).
    assert classifier.precision == ("bf16" if has_native_bf16(DEVICE) else "fp32")
    if ON_CUDA:
        assert classifier.precision == "bf16", torch.cuda.get_device_name()
    assert {p.device.type for p in classifier.model.parameters()} == {DEVICE.type}

    images = list(trained.faces)  # each 48x48 face is a whole image (detector=none)
    got = on_device.predict_batch(images)
    expected = reference.predict_batch(images)
    assert [len(faces) for faces in got] == [1] * len(images) == [len(f) for f in expected]
    labels = reference.labels
    p_got = np.array([[faces[0].probs[name] for name in labels] for faces in got])
    p_expected = np.array([[faces[0].probs[name] for name in labels] for faces in expected])
    difference = float(np.abs(p_got - p_expected).max())
    assert difference < BF16_PROBABILITY_TOLERANCE
    got_top = np.array([labels.index(faces[0].label) for faces in got])
    agreement = float((got_top == p_expected.argmax(1)).mean())
    # Only faces whose two best classes are nearly tied in fp32 may change their class.
    assert agreement >= MIN_TOP1_AGREEMENT, (
        f"top-1 agreement {agreement:.1%}; largest probability difference {difference:.4f}; "
        f"median fp32 margin {np.median(top_two_margin(p_expected)):.4f}"
    )


def test_onnx_export_of_a_network_on_the_device(trained, tmp_path):
    import onnx
    import onnxruntime as ort

    net = load_model(trained.checkpoint).to(DEVICE)
    faces = torch.from_numpy(trained.faces[:16]).to(DEVICE)
    x = to_model_input(faces, SIZE)
    assert x.device.type == DEVICE.type
    with torch.no_grad():
        device_logits = net(x).float().cpu().numpy()

    path = export_onnx(net, tmp_path / "model.onnx", SIZE, opset=17)
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert (metadata["arch"], metadata["input_size"]) == ("resnet18", str(SIZE))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"faces": x.cpu().numpy()})
    scale = max(1.0, float(np.abs(device_logits).max()))
    np.testing.assert_allclose(
        onnx_logits, device_logits, rtol=0, atol=TF32_LOGIT_TOLERANCE * scale
    )
    # And exactly the exported network in fp32 on the CPU (fer-export's own check).
    assert onnx_parity(net, path, SIZE) < PARITY_TOLERANCE
