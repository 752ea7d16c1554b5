"""Temperature scaling in a real run: fitted on the validation split after training, equal to a
reference fit of the same logits, recorded in best.ckpt and model.pt, reported in results.json
and reliability.png, refused (with the reason) on too few faces, and fitted by fer-eval for a
checkpoint without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from scipy.optimize import minimize_scalar

from fer_lightning.cli.train import train
from fer_lightning.models.calibration import (
    MAX_TEMPERATURE,
    MIN_FIT_FACES,
    MIN_TEMPERATURE,
    calibration_scores,
)
from fer_lightning.models.checkpoints import load_model
from fer_lightning.training.evaluate import evaluate_network
from tests.helpers.hydra import FAST, TRAINED_RUN_DATA, compose_train, run_cli

pytestmark = pytest.mark.slow

RUN = [
    *FAST,
    "model=resnet18",
    "optimizer=adamw",
    "optimizer.lr=1e-3",
    "scheduler=cosine",
    "tta=false",
    "logger=none",
]


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """Two epochs of resnet18 on 210 validation faces (30 per class): enough to fit on."""
    tmp_path = tmp_path_factory.mktemp("calibrated")
    cfg = compose_train(tmp_path, [*RUN, "trainer.max_epochs=2", *TRAINED_RUN_DATA])
    return cfg, train(cfg), tmp_path


def test_temperature_is_the_reference_fit_and_is_recorded(calibrated_run):
    cfg, results, _ = calibrated_run
    run_dir = Path(cfg.paths.output_dir)
    record = results["calibration"]
    assert record["fitted_on"] == 210 and record["split"] == "validation", record
    temperature = record["temperature"]
    assert temperature is not None, record["reason"]
    # The same validation logits, fitted again by scipy's bounded Brent search.
    best = load_model(results["best_checkpoint"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    val = evaluate_network(
        best,
        datamodule,
        input_size=64,
        tta=False,
        accelerator="cpu",
        precision=results["precision"],  # as the run fitted it
        progress=False,
        split="val",
    )
    assert len(val.labels) == 210
    z, y = val.logits.double(), val.labels
    reference = minimize_scalar(
        lambda t: float(F.cross_entropy(z / t, y)),
        bounds=(MIN_TEMPERATURE, MAX_TEMPERATURE),
        method="bounded",
        options={"xatol": 1e-8},
    ).x
    assert temperature == pytest.approx(reference, rel=2e-3)
    # On the split it was fitted on, the likelihood is no worse: that is what the fit optimises.
    # The ECE usually falls too, but need not: on these 210 faces of a network trained for two
    # epochs (timid: T < 1) it rose on one machine (0.077 -> 0.089, 15 bins), so it is reported
    # here, and asserted where scaling has a real miscalibration to remove
    # (tests/unit/test_calibration.py: over-confident logits, ECE 0.15+ -> under 0.05).
    before = calibration_scores(val.logits, y)
    after = calibration_scores(val.logits, y, temperature)
    assert after["nll"] <= before["nll"] + 1e-9
    print(f"fitting split: T {temperature:.4f}, ECE {before['ece']:.4f} -> {after['ece']:.4f}")
    # Recorded beside the weights: best.ckpt and model.pt, both loading with it.
    content = torch.load(results["best_checkpoint"], weights_only=True)
    assert content["calibration"]["temperature"] == temperature
    assert best.calibration.temperature == temperature
    assert load_model(run_dir / "model.pt").calibration == best.calibration
    # results.json: the test split before and after, the bins, the figure.
    saved = json.loads((run_dir / "results.json").read_text())
    for key in ("ece", "nll", "brier"):
        assert isinstance(saved[f"test/{key}"], float)
        assert isinstance(saved[f"test/{key}_calibrated"], float)
    assert sum(saved["calibration"]["reliability"]["after"]["count"]) == saved["test/samples"]
    assert (run_dir / "reliability.png").stat().st_size > 10_000


def test_fer_eval_fits_a_temperature_for_a_checkpoint_without_one(calibrated_run, tmp_path):
    _cfg, results, run_tmp = calibrated_run
    content = torch.load(results["best_checkpoint"], weights_only=True)
    recorded = content.pop("calibration")["temperature"]
    bare = tmp_path / "uncalibrated.ckpt"
    torch.save(content, bare)
    result = run_cli(
        "fer_lightning.eval",
        [
            f"ckpt_path={bare}",
            "tta=false",
            "trainer=cpu",
            *[o for o in FAST if o.startswith("data")],
            *TRAINED_RUN_DATA,
            f"paths.log_dir={tmp_path / 'outputs'}",
            f"paths.data_dir={run_tmp / 'data'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fitted by fer-eval on the validation split" in result.stdout
    (written,) = (tmp_path / "outputs").rglob("eval_results.json")
    member = json.loads(written.read_text())["members"][str(bare)]
    assert member["calibration"]["fitted_on"] == 210
    assert member["calibration"]["temperature"] == pytest.approx(recorded, rel=1e-3)
    assert member["test/ece_calibrated"] == pytest.approx(results["test/ece_calibrated"], abs=1e-3)
    assert (written.parent / "reliability.png").is_file()


def test_too_few_validation_faces_refuse_the_fit_and_training_completes(tmp_path):
    # FAST's data: 10 validation faces per class, 70 in all.
    cfg = compose_train(tmp_path, [*RUN, "trainer.max_epochs=1", "trainer.limit_train_batches=2"])
    results = train(cfg)
    assert results["status"] == "completed"
    record = results["calibration"]
    assert record["temperature"] is None
    assert (
        "70 validation faces" in record["reason"]
        and f"at least {MIN_FIT_FACES}" in record["reason"]
    )
    assert "test/ece_calibrated" not in results and isinstance(results["test/ece"], float)
    run_dir = Path(cfg.paths.output_dir)
    assert "calibration" not in torch.load(run_dir / "model.pt", weights_only=True)
    assert "calibration" not in torch.load(results["best_checkpoint"], weights_only=True)
    assert load_model(run_dir / "model.pt").calibration is None
    assert (run_dir / "reliability.png").is_file()


def test_int8_copy_keeps_the_temperature_and_exact_probabilities(tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime as ort

    from fer_lightning.faces.transforms import to_model_input
    from fer_lightning.inference.backends import OnnxClassifier
    from fer_lightning.inference.onnx_export import MIN_OPSET, export_onnx, quantize_int8
    from fer_lightning.models import create_model
    from fer_lightning.models.calibration import Calibration

    torch.manual_seed(0)
    net = create_model("resnet18")
    net.arch, net.calibration = "resnet18", Calibration(temperature=2.0, fitted_on=300)
    fp32 = export_onnx(net, tmp_path / "m.onnx", 32, MIN_OPSET)
    faces = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    int8 = quantize_int8(fp32, tmp_path / "m.int8.onnx", faces, 32)
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    x = to_model_input(torch.from_numpy(faces[:8]), 32).numpy()
    logits, probs = session.run(None, {"faces": x})
    # The temperature head stays fp32: the probabilities are those of the int8 logits.
    expected = torch.softmax(torch.from_numpy(logits) / 2.0, 1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert OnnxClassifier(int8).temperature == 2.0
