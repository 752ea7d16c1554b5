"""What a loaded model says it is: architecture, origin and training data (issue 20)."""

from __future__ import annotations

import logging

import pytest
import torch

from fer_lightning.models import create_model
from fer_lightning.models.checkpoints import load_model
from fer_lightning.models.provenance import ModelProvenance
from tests.helpers.inference import SMALL_ARCH, save_lightning_checkpoint

SYNTHETIC = {"dataset": "synthetic", "synthetic": True}


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return create_model(SMALL_ARCH).state_dict()


def test_synthetic_training_data_gives_a_one_sentence_warning():
    demo = ModelProvenance(SMALL_ARCH, "trained here", SYNTHETIC, "runs/demo/model.pt")
    assert demo.synthetic
    assert demo.summary() == "resnet18 trained here on synthetic demo faces (runs/demo/model.pt)"
    assert "synthetic demo faces" in demo.warning and "runs/demo/model.pt" in demo.warning
    assert "\n" not in demo.warning
    real = ModelProvenance(
        SMALL_ARCH, "trained here", {"dataset": "fer2013", "synthetic": False}, "m"
    )
    assert not real.synthetic and real.warning is None
    assert real.summary() == "resnet18 trained here on fer2013 (m)"
    unknown = ModelProvenance(SMALL_ARCH, "state dict", None, "w.pt")
    assert unknown.warning is None and "unknown" in unknown.summary()


def test_round_trips_through_json_and_refuses_other_origins():
    demo = ModelProvenance(SMALL_ARCH, "trained here", SYNTHETIC, "m.pt")
    assert ModelProvenance.from_json(demo.to_json()) == demo
    assert demo.to_dict()["training_data"] == SYNTHETIC
    with pytest.raises(ValueError, match="origin"):
        ModelProvenance(SMALL_ARCH, "demo", None, "m.pt")
    with pytest.raises(ValueError, match="lacks"):
        ModelProvenance.from_dict({"arch": SMALL_ARCH, "origin": "published"})
    with pytest.raises(ValueError, match="not JSON"):
        ModelProvenance.from_json("{")


def test_the_demo_model_pt_loads_as_trained_here_on_synthetic_faces(tmp_path, state, caplog):
    # model.pt of a run: the published layout plus "arch" and "training_data".
    path = tmp_path / "model.pt"
    torch.save(
        {"net": state, "arch": SMALL_ARCH, "input_size": 64, "training_data": SYNTHETIC}, path
    )
    with caplog.at_level(logging.INFO, logger="fer_lightning.models.checkpoints"):
        net = load_model(path)
    assert net.provenance == ModelProvenance(SMALL_ARCH, "trained here", SYNTHETIC, str(path))
    assert net.provenance.warning is not None
    # The log names the model as it is, not as "published RMN".
    assert "published" not in caplog.text
    assert f"resnet18 trained here on synthetic demo faces ({path})" in caplog.text


def test_a_model_pt_without_training_data_is_still_trained_here(tmp_path, state):
    path = tmp_path / "model.pt"
    torch.save({"net": state, "arch": SMALL_ARCH, "input_size": 64}, path)
    provenance = load_model(path).provenance
    assert provenance.origin == "trained here" and provenance.training_data is None


def test_the_authors_layout_loads_as_published_on_fer2013(tmp_path, state):
    path = tmp_path / "Z_published"
    torch.save({"net": state, "best_val_acc": 0.74}, path)
    provenance = load_model(path).provenance
    assert provenance.origin == "published"
    assert provenance.training_data == {"dataset": "fer2013", "synthetic": False}


def test_lightning_checkpoints_read_training_data_from_their_hyperparameters(tmp_path):
    path = save_lightning_checkpoint(tmp_path / "last.ckpt")
    content = torch.load(path, weights_only=True)
    assert load_model(path).provenance.training_data is None  # older runs: unknown
    content["hyper_parameters"]["training_data"] = SYNTHETIC
    torch.save(content, path)
    provenance = load_model(path).provenance
    assert (provenance.origin, provenance.synthetic) == ("trained here", True)


def test_a_bare_state_dict_has_unknown_training_data(tmp_path, state):
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    provenance = load_model(path).provenance
    assert (provenance.origin, provenance.training_data) == ("state dict", None)


def test_the_recognizer_exposes_the_models_provenance(tmp_path, state):
    from fer_lightning.inference import EmotionRecognizer

    path = tmp_path / "model.pt"
    torch.save(
        {"net": state, "arch": SMALL_ARCH, "input_size": 64, "training_data": SYNTHETIC}, path
    )
    recognizer = EmotionRecognizer.from_checkpoint(path, device="cpu", detector="none")
    assert recognizer.provenance.synthetic
    assert recognizer.provenance.path == str(path)


def test_onnx_files_carry_the_provenance_and_the_backend_reads_it_back(tmp_path, state):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from fer_lightning.inference.backends import OnnxClassifier
    from fer_lightning.inference.onnx_export import export_onnx

    path = tmp_path / "model.pt"
    torch.save(
        {"net": state, "arch": SMALL_ARCH, "input_size": 32, "training_data": SYNTHETIC}, path
    )
    onnx_path = export_onnx(load_model(path), tmp_path / "model.onnx", 32, opset=17)
    provenance = OnnxClassifier(onnx_path).provenance
    assert provenance == ModelProvenance(SMALL_ARCH, "trained here", SYNTHETIC, str(onnx_path))
