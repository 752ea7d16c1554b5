"""Temperature scaling: one number that makes a network's probabilities mean what they say.

Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017): the logits of a trained
network are divided by one temperature ``T`` fitted on held-out faces (the validation split) by
minimising the negative log-likelihood. ``T > 1`` softens over-confident outputs, ``T < 1``
sharpens timid ones; the predicted class never changes, only how sure the network says it is.

The fit is a bounded one-dimensional search: the NLL of ``softmax(z / T)`` is convex in
``1 / T`` (a log-sum-exp of linear functions minus a linear one), so it has one minimum along
``log T`` too, which a golden-section search over ``[MIN_TEMPERATURE, MAX_TEMPERATURE]`` finds to
``1e-6`` in ``log T``. A minimum on a bound means the likelihood keeps improving past it (for
instance every fitting face is classified correctly, so sharpening without limit always helps):
no temperature is stored then, and the reason says so.

The record kept with a model (checkpoint, ``model.pt``, ONNX metadata) is a
:class:`Calibration` of plain values. A leaf of the models layer: torch and torchmetrics only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

#: Bins of the expected calibration error and of the reliability diagram (Guo et al.'s 15).
ECE_BINS = 15

#: The fewest faces a temperature is fitted on. One parameter is cheap to fit, but the NLL it
#: minimises is an average that a handful of confident mistakes dominate on a small set, and the
#: 15-bin reliability check of the result needs faces in its bins: below 200 faces the bins hold
#: 13 on average (fewer in the sparse low-confidence bins), one face moves a bin's accuracy by
#: more than 7 points, and neither the fit nor its check says anything a reader could trust. A
#: JAFFE fold's validation split (about 20 faces) is refused; FER2013's PublicTest (3,589) and the
#: synthetic demo's (420) are not.
MIN_FIT_FACES = 200

#: The search interval of the temperature.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
_SEARCH_TOLERANCE = 1e-6  # in log T
_BOUND_MARGIN = 1e-3  # in log T: an optimum this close to a bound is "on the bound"


class CalibrationRefused(ValueError):
    """No temperature was fitted; the message says why (too few faces, no finite optimum)."""


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature: ``temperature`` (probabilities are ``softmax(logits / T)``), the
    number of faces it was fitted on (``fitted_on``) and their ``split``."""

    temperature: float
    fitted_on: int
    split: str = "validation"

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"A temperature must be a finite positive number, not {t!r}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (checkpoint- and JSON-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Any) -> Calibration:
        """The inverse of :meth:`to_dict`; ``ValueError`` for anything that is not one."""
        if not isinstance(values, dict) or "temperature" not in values:
            raise ValueError(f"A calibration record is a mapping with a temperature: {values!r}")
        fitted_on = values.get("fitted_on", 0)
        if isinstance(fitted_on, bool) or not isinstance(fitted_on, int):
            raise ValueError(f"A calibration record's fitted_on must be an int: {fitted_on!r}")
        return cls(
            temperature=values["temperature"],
            fitted_on=fitted_on,
            split=str(values.get("split", "validation")),
        )

    def summary(self) -> str:
        return f"temperature {self.temperature:.4g} (fitted on {self.fitted_on} {self.split} faces)"


def calibration_record(value: object) -> Calibration | None:
    """``value`` (a checkpoint's ``calibration`` entry) as a :class:`Calibration`; ``None`` when
    absent; ``ValueError`` when present but not a valid record."""
    if value is None:
        return None
    return Calibration.from_dict(value)


def nll(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def _check(logits: Tensor, labels: Tensor) -> None:
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise ValueError(
            f"Expected (N, C) logits and (N,) labels, got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    if not torch.isfinite(logits).all():
        raise ValueError("The logits hold NaN or infinite values.")


def fit_temperature(
    logits: Tensor, labels: Tensor, min_faces: int = MIN_FIT_FACES, split: str = "validation"
) -> Calibration:
    """The temperature minimising the NLL of ``labels`` under ``softmax(logits / T)``, by a
    golden-section search over ``log T`` in ``[MIN_TEMPERATURE, MAX_TEMPERATURE]``.

    Raises :class:`CalibrationRefused` for fewer than ``min_faces`` faces (default
    :data:`MIN_FIT_FACES`, which says why) and when the optimum lies on a bound."""
    _check(logits, labels)
    faces = len(labels)
    if faces < min_faces:
        raise CalibrationRefused(
            f"Not fitting a temperature on {faces} {split} faces: at least {min_faces} are "
            "needed (below that the fit follows a few confident mistakes and its 15-bin "
            "reliability check has too few faces per bin to show anything)."
        )
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()

    def loss(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    low, high = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > _SEARCH_TOLERANCE:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    log_t = (a + b) / 2
    if log_t - low < _BOUND_MARGIN or high - log_t < _BOUND_MARGIN:
        accuracy = float((z.argmax(1) == y).double().mean())
        reason = (
            f"every one of the {faces} {split} faces is classified correctly, so the "
            "likelihood keeps rising as the probabilities sharpen"
            if accuracy == 1.0 and log_t - low < _BOUND_MARGIN
            else f"the likelihood of the {faces} {split} faces is best at the search's bound"
        )
        raise CalibrationRefused(
            f"No finite temperature in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}] is best: {reason}."
        )
    return Calibration(temperature=float(math.exp(log_t)), fitted_on=faces, split=split)


def calibration_scores(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, n_bins: int = ECE_BINS
) -> dict[str, float]:
    """``ece`` (expected calibration error, ``n_bins`` equal-width confidence bins, torchmetrics'
    ``MulticlassCalibrationError`` with the L1 norm), ``nll`` (mean negative log-likelihood) and
    ``brier`` (mean over faces of the squared distance between the probability vector and the
    one-hot label, summed over classes: 0 is perfect, 2 the worst) of
    ``softmax(logits / temperature)``."""
    _check(logits, labels)
    z, y = logits.detach().double().cpu() / temperature, labels.detach().long().cpu()
    probs = torch.softmax(z, dim=1)
    num_classes = probs.shape[1]
    ece = multiclass_calibration_error(probs.float(), y, num_classes, n_bins=n_bins, norm="l1")
    one_hot = F.one_hot(y, num_classes).double()
    return {
        "ece": float(ece),
        "nll": float(F.cross_entropy(z, y)),
        "brier": float(((probs - one_hot) ** 2).sum(dim=1).mean()),
    }


def reliability_bins(
    logits: Tensor, labels: Tensor, temperature: float = 1.0, n_bins: int = ECE_BINS
) -> dict[str, list]:
    """Per equal-width confidence bin (``[k / n, (k + 1) / n)``, 1.0 in the last): the mean
    confidence, the accuracy and the number of faces (``None`` for the mean and accuracy of an
    empty bin); the numbers of a reliability diagram, and what the ECE averages."""
    _check(logits, labels)
    probs = torch.softmax(logits.detach().double().cpu() / temperature, dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels.detach().long().cpu()).double()
    # torchmetrics' binning (left-closed bins), with a confidence of exactly 1 in the last bin.
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    mean_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, confidence)
    mean_acc = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, correct)
    return {
        "edges": [float(e) for e in edges],
        "confidence": [
            float(mean_conf[k] / counts[k]) if counts[k] else None for k in range(n_bins)
        ],
        "accuracy": [float(mean_acc[k] / counts[k]) if counts[k] else None for k in range(n_bins)],
        "count": [int(c) for c in counts],
    }


def calibrated_probabilities(logits: Tensor, temperature: float | None) -> Tensor:
    """``softmax(logits / temperature)`` in float32 (plain softmax for ``None``)."""
    z = logits.float()
    if temperature is not None:
        z = z / float(temperature)
    return torch.softmax(z, dim=1)
