"""The inference notebook runs from top to bottom (so that it cannot rot)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.inference import installed_detector, save_lightning_checkpoint

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "inference.ipynb"


@pytest.mark.slow
def test_inference_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    installed_detector()  # the notebook uses detector="auto"
    # A small stand-in for the demo run's checkpoint, so that the test does not train.
    checkpoint = save_lightning_checkpoint(tmp_path / "small.ckpt", input_size=64)
    monkeypatch.setenv("FER_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute(env=dict(os.environ))
    outputs = "".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert f"checkpoint: {checkpoint} (yours)" in outputs
    assert "4 faces in the 2x2 mosaic" in outputs
    assert "UNTRAINED" not in outputs
    errors = [
        out
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if out.output_type == "error"
    ]
    assert not errors
    images = [
        out
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) == 4  # annotated photos, probability bars, synthetic faces, crops
