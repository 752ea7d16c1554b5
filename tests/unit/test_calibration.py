"""Temperature scaling (fer_lightning.models.calibration): the fit against scipy's, the scores,
the refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torchmetrics.classification import MulticlassCalibrationError

from fer_lightning.models.calibration import (
    MAX_TEMPERATURE,
    MIN_FIT_FACES,
    MIN_TEMPERATURE,
    Calibration,
    CalibrationRefused,
    calibrated_probabilities,
    calibration_record,
    calibration_scores,
    fit_temperature,
    reliability_bins,
)


def overconfident(n: int = 1000, classes: int = 7, scale: float = 4.0, seed: int = 0):
    """Logits of a network that is calibrated at ``T = scale``: labels drawn from
    ``softmax(z)``, logits ``z * scale`` (over-confident for ``scale > 1``)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g) * 1.5
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return z * scale, labels


def reference_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """scipy's bounded Brent search on the same NLL, in float64."""
    z, y = logits.double(), labels.long()
    result = minimize_scalar(
        lambda t: float(F.cross_entropy(z / t, y)),
        bounds=(MIN_TEMPERATURE, MAX_TEMPERATURE),
        method="bounded",
        options={"xatol": 1e-8},
    )
    return float(result.x)


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_fit_equals_the_reference_fit(scale: float) -> None:
    logits, labels = overconfident(scale=scale)
    fitted = fit_temperature(logits, labels)
    expected = reference_temperature(logits, labels)
    assert fitted.temperature == pytest.approx(expected, rel=1e-4)
    assert fitted.fitted_on == len(labels)
    assert fitted.split == "validation"
    # An over-confident network is cooled (T > 1), a timid one sharpened (T < 1).
    if scale != 1.0:
        assert (fitted.temperature > 1) == (scale > 1)


def test_ece_and_nll_after_fitting_no_worse_on_the_fitting_split() -> None:
    logits, labels = overconfident(scale=4.0)
    fitted = fit_temperature(logits, labels)
    before = calibration_scores(logits, labels)
    after = calibration_scores(logits, labels, fitted.temperature)
    assert after["nll"] <= before["nll"]
    assert after["ece"] <= before["ece"]
    assert after["brier"] <= before["brier"]
    assert before["ece"] > 0.15 and after["ece"] < 0.05  # a real improvement, not a tie
    assert fitted.temperature == pytest.approx(4.0, rel=0.15)


def test_scores_match_torchmetrics_and_definitions() -> None:
    logits, labels = overconfident(n=500, scale=2.0, seed=3)
    scores = calibration_scores(logits, labels, temperature=1.7)
    probs = torch.softmax(logits.double() / 1.7, dim=1)
    ece = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")(probs.float(), labels)
    assert scores["ece"] == pytest.approx(float(ece), abs=1e-6)
    assert scores["nll"] == pytest.approx(float(-probs[range(500), labels].log().mean()))
    one_hot = F.one_hot(labels, 7).double()
    assert scores["brier"] == pytest.approx(float(((probs - one_hot) ** 2).sum(1).mean()))


def test_reliability_bins_add_up_to_the_ece() -> None:
    logits, labels = overconfident(n=800, scale=3.0, seed=5)
    bins = reliability_bins(logits, labels)
    assert sum(bins["count"]) == 800
    assert len(bins["count"]) == 15 and len(bins["edges"]) == 16
    gaps = [
        n * abs(a - c)
        for n, a, c in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True)
        if n
    ]
    assert sum(gaps) / 800 == pytest.approx(calibration_scores(logits, labels)["ece"], abs=1e-5)
    for k, (n, c) in enumerate(zip(bins["count"], bins["confidence"], strict=True)):
        if n:
            assert bins["edges"][k] <= c <= bins["edges"][k + 1]
        else:
            assert c is None and bins["accuracy"][k] is None


def test_refuses_too_few_faces() -> None:
    logits, labels = overconfident(n=MIN_FIT_FACES - 1)
    with pytest.raises(CalibrationRefused, match=f"{MIN_FIT_FACES - 1} validation faces"):
        fit_temperature(logits, labels)
    # Exactly the minimum is enough.
    logits, labels = overconfident(n=MIN_FIT_FACES)
    assert fit_temperature(logits, labels).fitted_on == MIN_FIT_FACES


def test_refuses_when_every_face_is_right() -> None:
    labels = torch.arange(300) % 7
    logits = F.one_hot(labels, 7).float() * 5
    with pytest.raises(CalibrationRefused, match="classified correctly"):
        fit_temperature(logits, labels)


def test_record_round_trip_and_validation() -> None:
    record = Calibration(temperature=1.5, fitted_on=420)
    assert calibration_record(record.to_dict()) == record
    assert calibration_record(None) is None
    for bad in ({"temperature": 0.0}, {"temperature": math.nan}, {"temperature": "2"}, [1.0]):
        with pytest.raises(ValueError):
            calibration_record(bad)
    assert "420 validation faces" in record.summary()


def test_calibrated_probabilities() -> None:
    logits, _ = overconfident(n=10)
    assert torch.allclose(calibrated_probabilities(logits, None), torch.softmax(logits, 1))
    assert torch.allclose(calibrated_probabilities(logits, 2.0), torch.softmax(logits / 2, 1))
