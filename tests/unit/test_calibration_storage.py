"""The fitted temperature survives save and load (Lightning checkpoint, model.pt, ONNX), the
recogniser applies it unless told not to, and files without one work as before."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fer_lightning.cli.train import save_published_format
from fer_lightning.faces.transforms import to_model_input
from fer_lightning.inference import EmotionRecognizer, OnnxClassifier, TorchClassifier
from fer_lightning.inference.backends import TEMPERATURE_KEY
from fer_lightning.models import create_model
from fer_lightning.models.calibration import Calibration
from fer_lightning.models.checkpoints import CheckpointError, load_model
from fer_lightning.models.provenance import PUBLISHED
from fer_lightning.training.calibrate import calibration_results, record_in_checkpoint
from fer_lightning.training.module import FERClassifier
from fer_lightning.training.reporting import reliability_figure
from tests.helpers.inference import (
    SMALL_INPUT,
    save_lightning_checkpoint,
    save_published_checkpoint,
)

CALIBRATION = Calibration(temperature=2.5, fitted_on=420)


def crops(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 48, 48), dtype=np.uint8)


def raw_logits(model: torch.nn.Module, faces: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(to_model_input(torch.from_numpy(faces), SMALL_INPUT)).float()


def classifier(model: torch.nn.Module, calibrate: bool = True) -> TorchClassifier:
    return TorchClassifier(
        model, "cpu", "fp32", SMALL_INPUT, fold_batchnorm=False, calibrate=calibrate
    )


def test_lightning_checkpoint_keeps_the_temperature(tmp_path: Path) -> None:
    path = save_lightning_checkpoint(tmp_path / "best.ckpt")
    before = torch.load(path, weights_only=True)
    record_in_checkpoint(path, CALIBRATION)
    content = torch.load(path, weights_only=True)  # still plain values only
    assert content["calibration"] == CALIBRATION.to_dict()
    assert content["hyper_parameters"] == before["hyper_parameters"]
    assert set(content["state_dict"]) == set(before["state_dict"])
    assert not list(tmp_path.glob(".*partial"))
    model = load_model(path)
    assert model.calibration == CALIBRATION
    assert model.input_size == SMALL_INPUT


def test_lightning_module_still_loads_a_calibrated_checkpoint(tmp_path: Path) -> None:
    # The temperature sits beside the hyperparameters, which stay the module's arguments.
    module = FERClassifier(arch="resnet18", input_size=SMALL_INPUT, cpu_convs=False)
    path = tmp_path / "best.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": "2.6.0",
        },
        path,
    )
    record_in_checkpoint(path, CALIBRATION)
    loaded = FERClassifier.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.arch == "resnet18"
    assert load_model(path).calibration == CALIBRATION


def test_model_pt_keeps_the_temperature_and_predicts_with_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = create_model("resnet18")
    net.arch = "resnet18"
    net.calibration = CALIBRATION
    path = save_published_format(net, tmp_path, SMALL_INPUT, None, None)
    loaded = load_model(path)
    assert loaded.calibration == CALIBRATION
    faces = crops()
    logits = raw_logits(loaded, faces)
    calibrated = classifier(loaded)(faces)
    np.testing.assert_allclose(calibrated, torch.softmax(logits / 2.5, 1).numpy(), atol=1e-5)
    raw = classifier(loaded, calibrate=False)(faces)
    np.testing.assert_allclose(raw, torch.softmax(logits, 1).numpy(), atol=1e-5)
    # The temperature changes how sure, never what.
    assert (calibrated.argmax(1) == raw.argmax(1)).all()
    assert calibrated.max(1).mean() < raw.max(1).mean()


def test_published_checkpoint_without_temperature_predicts_as_before(tmp_path, caplog) -> None:
    path = save_published_checkpoint(tmp_path / "Z_resmasking_dropout1_rot30.pt")
    caplog.set_level(logging.INFO)
    model = load_model(path)
    assert model.calibration is None
    assert model.provenance.origin == PUBLISHED
    assert "no temperature" in caplog.text
    faces = crops()
    expected = torch.softmax(raw_logits(model, faces), 1).numpy()
    on = classifier(model)
    assert on.temperature is None and not on.calibrated
    np.testing.assert_allclose(on(faces), expected, atol=1e-5)
    assert on.calibration_info() == {
        "applied": False,
        "temperature": None,
        "fitted_on": None,
        "split": None,
    }
    assert "no fitted temperature" in on.calibration_note()


def test_invalid_record_is_one_clear_error(tmp_path: Path) -> None:
    path = save_lightning_checkpoint(tmp_path / "best.ckpt")
    content = torch.load(path, weights_only=True)
    content["calibration"] = {"temperature": -1.0, "fitted_on": 3}
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="calibration record is invalid"):
        load_model(path)


def test_recognizer_says_which(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = create_model("resnet18")
    net.arch, net.calibration = "resnet18", CALIBRATION
    path = save_published_format(net, tmp_path, SMALL_INPUT, None, None)
    on = EmotionRecognizer.from_checkpoint(path, "cpu", detector="none")
    off = EmotionRecognizer.from_checkpoint(path, "cpu", detector="none", calibrate=False)
    assert on.calibration == {
        "applied": True,
        "temperature": 2.5,
        "fitted_on": 420,
        "split": "validation",
    }
    assert off.calibration["applied"] is False and off.calibration["temperature"] == 2.5
    assert "temperature=2.5" in repr(on.classifier)
    assert "calibrate=false" in off.classifier.calibration_note()


def test_onnx_export_applies_the_temperature(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from fer_lightning.inference.onnx_export import MIN_OPSET, export_onnx, onnx_parity

    torch.manual_seed(0)
    net = create_model("resnet18")
    net.arch, net.calibration = "resnet18", CALIBRATION
    path = export_onnx(net, tmp_path / "model.onnx", SMALL_INPUT, MIN_OPSET)
    assert onnx_parity(net, path, SMALL_INPUT) < 1e-4  # the logits as before
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    faces = crops(4)
    x = to_model_input(torch.from_numpy(faces), SMALL_INPUT).numpy()
    logits, probs = session.run(None, {"faces": x})
    expected = torch.softmax(torch.from_numpy(logits) / 2.5, 1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata[TEMPERATURE_KEY]) == CALIBRATION.to_dict()
    # The recogniser's ONNX backend reads it back, and can switch it off.
    on, off = OnnxClassifier(path), OnnxClassifier(path, calibrate=False)
    assert on.calibration == CALIBRATION and on.temperature == 2.5 and off.temperature is None
    np.testing.assert_allclose(on(faces), expected, atol=1e-5)
    np.testing.assert_allclose(off(faces), torch.softmax(torch.from_numpy(logits), 1), atol=1e-5)
    np.testing.assert_allclose(on(faces), classifier(net)(faces), atol=1e-4)
    # Without a temperature: one output and no metadata, as before.
    net.calibration = None
    plain = export_onnx(net, tmp_path / "plain.onnx", SMALL_INPUT, MIN_OPSET)
    session = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert TEMPERATURE_KEY not in session.get_modelmeta().custom_metadata_map
    assert OnnxClassifier(plain).calibration is None


def test_results_and_reliability_figure() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 7, generator=g) * 4
    labels = torch.randint(0, 7, (300,), generator=g)
    results = calibration_results(logits, labels, CALIBRATION)
    for key in ("ece", "nll", "brier"):
        assert isinstance(results[f"test/{key}"], float)
        assert isinstance(results[f"test/{key}_calibrated"], float)
    record = results["calibration"]
    assert record["temperature"] == 2.5 and record["fitted_on"] == 420 and record["reason"] is None
    assert sum(record["reliability"]["after"]["count"]) == 300
    json.dumps(results)  # results.json-ready
    assert len(reliability_figure({**results, "test/samples": 300}).axes) == 2
    refused = calibration_results(logits, labels, None, "too few faces")
    assert refused["calibration"]["temperature"] is None
    assert refused["calibration"]["reason"] == "too few faces"
    assert (
        "test/ece_calibrated" not in refused
        and "after" not in refused["calibration"]["reliability"]
    )
    assert len(reliability_figure(refused).axes) == 1


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_calibrate_option_of_the_recogniser_configs(command: str) -> None:
    from fer_lightning.cli.recognizer import RecognizerOptions
    from tests.helpers.hydra import compose_config

    base = ["ckpt_path=model.pt", "source=x.jpg"] if command == "predict" else ["ckpt_path=m.pt"]
    on = RecognizerOptions.from_hydra(compose_config(command, base), "example")
    off = RecognizerOptions.from_hydra(compose_config(command, [*base, "calibrate=false"]), "x")
    assert on.calibrate is True and off.calibrate is False


def test_healthz_and_every_answer_say_whether_probabilities_are_calibrated() -> None:
    from fastapi.testclient import TestClient

    from fer_lightning.serve import create_app

    torch.manual_seed(0)
    net = create_model("resnet18")
    net.calibration = CALIBRATION
    _ok, encoded = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    photo, jpeg = encoded.tobytes(), {"Content-Type": "image/jpeg"}
    for calibrate in (True, False):
        recognizer = EmotionRecognizer(classifier(net, calibrate), detector="none")
        with TestClient(create_app(recognizer)) as client:
            health = client.get("/healthz").json()
            answers = [
                client.post(f"/v1/{route}", content=photo, headers=jpeg).json()
                for route in ("predict", "explain")
            ]
        for answer in answers:
            # Each answer says what its probabilities are.
            assert answer["calibrated"] is calibrate and len(answer["faces"]) == 1
            assert answer.get("temperature") == (2.5 if calibrate else None)
        assert health["calibration"] == {
            "applied": calibrate,
            "temperature": 2.5,
            "fitted_on": 420,
            "split": "validation",
        }


def test_no_validation_faces_is_a_reason_not_a_crash() -> None:
    from fer_lightning.training.calibrate import fit_on_validation

    net = create_model("resnet18")
    calibration, reason = fit_on_validation(net, None, input_size=SMALL_INPUT, limit_batches=0)
    assert calibration is None and "limit_val_batches=0" in reason
