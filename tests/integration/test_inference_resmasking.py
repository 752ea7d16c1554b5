"""The recogniser end to end with the 137M-parameter Residual Masking Network."""

from __future__ import annotations

import pytest

from fer_lightning.inference import (
    EmotionRecognizer,
)
from fer_lightning.inference.samples import astronaut, mosaic
from tests.helpers.inference import (
    SMALL_INPUT,
    installed_detector,
    save_published_checkpoint,
)
from tests.unit.test_inference_recognizer import assert_well_formed


@pytest.mark.slow
def test_resmasking_network_end_to_end(tmp_path):
    path = save_published_checkpoint(tmp_path / "rmn.pt", arch="resmasking_dropout1")
    recognizer = EmotionRecognizer.from_checkpoint(
        path,
        device="cpu",
        detector=installed_detector(),
        arch="resmasking_dropout1",
        input_size=SMALL_INPUT,
    )
    (batch,) = recognizer.predict_batch([mosaic(astronaut(), 1, 2)])
    assert len(batch) == 2
    for face in batch:
        assert_well_formed(face)
