"""fer-predict explain=true, in process: an overlay PNG per image beside the annotated copy,
named in predictions.jsonl (not a predictions.csv column); an ONNX model is refused."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd

from fer_lightning.cli import predict
from fer_lightning.data.synthetic import draw_face
from fer_lightning.inference.tables import columns
from fer_lightning.labels import EMOTIONS
from tests.helpers.hydra import run_app
from tests.helpers.inference import SMALL_INPUT, save_published_checkpoint


def test_explain_writes_an_overlay_named_in_predictions_jsonl(tmp_path, capsys):
    ckpt = save_published_checkpoint(tmp_path / "small.pt")
    source = tmp_path / "in"
    source.mkdir()
    for i in range(2):
        face = cv2.resize(draw_face(i, np.random.default_rng(i)), (96, 96))
        cv2.imwrite(str(source / f"face{i}.png"), face)
    out = tmp_path / "out"
    args = [f"ckpt_path={ckpt}", "detector=none", f"input_size={SMALL_INPUT}", f"source={source}"]
    status = run_app(predict.main, [*args, f"output_dir={out}", "explain=true"])
    assert status == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert [line["explain"] for line in lines] == ["face0.png.explain.png", "face1.png.explain.png"]
    for line in lines:
        overlay = cv2.imread(str(out / line["explain"]))
        annotated = cv2.imread(str(out / line["output"]))
        assert overlay.shape == annotated.shape == (96, 96, 3)
        # The map's colours are over the face: the overlay is no longer gray.
        assert np.abs(overlay.astype(int) - overlay.mean(axis=2, keepdims=True)).max() > 40
    assert list(pd.read_csv(out / "predictions.csv").columns) == columns(EMOTIONS)


def test_explain_refuses_an_onnx_model(tmp_path, capsys):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read")
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), draw_face(0, np.random.default_rng(0)))
    out = tmp_path / "out"
    args = [f"ckpt_path={model}", "detector=none", f"source={image}", f"output_dir={out}"]
    status = run_app(predict.main, [*args, "explain=true"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "explain=true needs a PyTorch model" in err and "Traceback" not in err
    assert not out.exists()
