"""An 8-class FER+ checkpoint carries its class names everywhere a user sees them: load_model,
the recogniser, fer-predict's predictions.jsonl and the ONNX metadata; older checkpoints without
names keep FER2013's."""

from __future__ import annotations

import json

import cv2
import pytest
import pytorch_lightning as pl
import torch

from fer_lightning.cli import predict
from fer_lightning.cli.train import train
from fer_lightning.data.synthetic import generate_synthetic_ferplus
from fer_lightning.inference import EmotionRecognizer
from fer_lightning.inference.samples import astronaut
from fer_lightning.labels import EMOTIONS, FERPLUS_EMOTIONS
from fer_lightning.models.checkpoints import load_model
from fer_lightning.training.module import FERClassifier
from tests.helpers.hydra import FAST, compose_train, run_app
from tests.helpers.inference import SMALL_INPUT, save_lightning_checkpoint


@pytest.fixture(scope="module")
def ferplus_checkpoint(tmp_path_factory):
    """An untrained 8-class module saved by Lightning itself, as a training run would."""
    module = FERClassifier(
        arch="resnet18",
        num_classes=8,
        label_names=list(FERPLUS_EMOTIONS),
        input_size=SMALL_INPUT,
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3},
    )
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("ferplus") / "ferplus.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def face_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "face.png"
    cv2.imwrite(str(path), astronaut())
    return path


def test_checkpoint_stores_plain_names_and_load_model_returns_them(ferplus_checkpoint):
    saved = torch.load(ferplus_checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["label_names"] == list(FERPLUS_EMOTIONS)
    model = load_model(ferplus_checkpoint)
    assert model.label_names == FERPLUS_EMOTIONS
    assert model.fc.out_features == 8


def test_recognizer_labels_and_predictions_use_the_checkpoint_names(ferplus_checkpoint):
    recognizer = EmotionRecognizer.from_checkpoint(ferplus_checkpoint, "cpu", detector="none")
    assert recognizer.labels == FERPLUS_EMOTIONS
    (face,) = recognizer.predict(astronaut())
    assert face.label in FERPLUS_EMOTIONS and list(face.probs) == list(FERPLUS_EMOTIONS)


def test_predict_command_writes_ferplus_names(ferplus_checkpoint, face_image, tmp_path, capsys):
    out = tmp_path / "out"
    status = run_app(
        predict.main,
        [
            f"ckpt_path={ferplus_checkpoint}",
            f"source={face_image}",
            f"output_dir={out}",
            "detector=none",
            "device=cpu",
        ],
    )
    assert status == 0, capsys.readouterr().err
    (line,) = [json.loads(text) for text in (out / "predictions.jsonl").read_text().splitlines()]
    assert line["label"] in FERPLUS_EMOTIONS
    assert list(line["probs"]) == list(FERPLUS_EMOTIONS)


def test_checkpoints_without_names_keep_fer2013s(tmp_path):
    path = save_lightning_checkpoint(tmp_path / "old.ckpt")  # no label_names, as before
    assert not hasattr(load_model(path), "label_names")
    recognizer = EmotionRecognizer.from_checkpoint(path, "cpu", detector="none")
    assert recognizer.labels == EMOTIONS


@pytest.mark.slow
def test_onnx_metadata_carries_the_names(ferplus_checkpoint, tmp_path):
    from fer_lightning.inference.backends import OnnxClassifier
    from fer_lightning.inference.onnx_export import export_onnx

    model = load_model(ferplus_checkpoint)
    path = export_onnx(model, tmp_path / "ferplus.onnx", SMALL_INPUT, opset=17)
    assert OnnxClassifier(path).labels == FERPLUS_EMOTIONS


@pytest.mark.slow
def test_training_on_ferplus_keeps_the_names_from_data_to_checkpoint(tmp_path):
    """fer-train data=ferplus on synthetic FER+ files: 8 outputs, names in the checkpoint and
    results.json, accuracy against the majority labels."""
    generate_synthetic_ferplus(
        tmp_path / "data" / "fer2013", train_per_class=8, val_per_class=3, test_per_class=3, seed=0
    )
    overrides = [arg for arg in FAST if not arg.startswith(("data=", "data.synthetic"))]
    cfg = compose_train(
        tmp_path,
        [
            *overrides,
            "data=ferplus",
            "data.ferplus.labels=crossentropy",
            "model=resnet18",
            "model.pretrained_backbone=null",
            "trainer.max_epochs=1",
            "tta=false",
        ],
    )
    results = train(cfg)
    assert list(results["test/recall"]) == list(FERPLUS_EMOTIONS)
    assert len(results["test/confusion_matrix"]) == 8
    model = load_model(results["best_checkpoint"])
    assert model.label_names == FERPLUS_EMOTIONS
