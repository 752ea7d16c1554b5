"""After training (and in ``fer-eval``): fit a temperature on the validation split, record it
with the weights, and score the test split's calibration before and after.

The numbers (:mod:`fer_lightning.models.calibration`) go to results.json as ``test/ece``,
``test/nll``, ``test/brier`` (the network's own probabilities), the same with ``_calibrated``
(divided by the fitted temperature), and ``calibration``: the temperature, the faces it was
fitted on, why none was fitted when none was, and the reliability diagram's bins before and
after (the figure is drawn from these alone).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from fer_lightning.models.calibration import (
    ECE_BINS,
    MIN_FIT_FACES,
    Calibration,
    CalibrationRefused,
    calibration_scores,
    fit_temperature,
    reliability_bins,
)
from fer_lightning.models.checkpoint_reader import read_checkpoint
from fer_lightning.training.evaluate import evaluate_network

log = logging.getLogger(__name__)


def fit_on_validation(
    net: nn.Module,
    datamodule: pl.LightningDataModule,
    *,
    input_size: int,
    accelerator: str = "auto",
    precision: str = "32-true",
    limit_batches: int | float | None = None,
    min_faces: int = MIN_FIT_FACES,
) -> tuple[Calibration | None, str | None]:
    """(the temperature fitted on ``datamodule``'s validation split, None), or (None, why not)."""
    if limit_batches == 0:
        return None, "no validation faces (limit_val_batches=0)"
    try:
        predictions = evaluate_network(
            net,
            datamodule,
            input_size=input_size,
            tta=False,
            accelerator=accelerator,
            precision=precision,
            limit_test_batches=limit_batches,
            progress=False,
            split="val",
        )
    except ValueError as error:  # an empty validation split
        log.warning("No temperature: %s", error)
        return None, str(error)
    assert predictions.logits is not None
    try:
        calibration = fit_temperature(predictions.logits, predictions.labels, min_faces)
    except CalibrationRefused as refused:
        log.warning("No temperature: %s", refused)
        return None, str(refused)
    log.info("Fitted %s.", calibration.summary())
    return calibration, None


def calibration_results(
    logits: Tensor | None,
    labels: Tensor,
    calibration: Calibration | None,
    reason: str | None = None,
    prefix: str = "test/",
) -> dict[str, Any]:
    """The results.json entries of a split's calibration: ``<prefix>ece``/``nll``/``brier``
    before, ``..._calibrated`` after (with a temperature), and ``calibration`` (the record,
    ``reason`` when there is none, and the reliability bins before and after)."""
    record: dict[str, Any] = {
        "temperature": None,
        "fitted_on": None,
        "split": None,
        "reason": reason,
        "bins": ECE_BINS,
    }
    if calibration is not None:
        record.update(calibration.to_dict(), reason=None)
    results: dict[str, Any] = {"calibration": record}
    if logits is None:
        return results
    for name, value in calibration_scores(logits, labels).items():
        results[f"{prefix}{name}"] = value
    reliability = {"before": reliability_bins(logits, labels)}
    if calibration is not None:
        after = calibration_scores(logits, labels, calibration.temperature)
        for name, value in after.items():
            results[f"{prefix}{name}_calibrated"] = value
        reliability["after"] = reliability_bins(logits, labels, calibration.temperature)
    record["reliability"] = reliability
    return results


def record_in_checkpoint(path: str | Path, calibration: Calibration) -> Path:
    """Add ``calibration`` (plain values, beside the weights) to the Lightning checkpoint at
    ``path``, rewritten atomically; the hyperparameters stay as they are."""
    path = Path(path)
    content = read_checkpoint(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path} is not a dict checkpoint.")
    content["calibration"] = calibration.to_dict()
    partial = path.with_name(f".{path.name}.partial")
    try:
        torch.save(content, partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path
