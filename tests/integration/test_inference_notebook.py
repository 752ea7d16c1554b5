"""The inference notebook runs from top to bottom (so that it cannot rot)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers.inference import installed_detector, save_lightning_checkpoint

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "inference.ipynb"


@pytest.mark.slow
def test_inference_notebook_runs(tmp_path, monkeypatch):
    """As a new user meets it offline: no $FER_CHECKPOINT, the published file not in the cache,
    a finished demo run and a newer run of another experiment. The notebook takes the demo
    run's best checkpoint (never the other run's), says it learned synthetic faces, and draws."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    installed_detector()  # the notebook uses detector="auto"
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    demo = project / "outputs" / "train" / "demo" / "2026-11-28_10-00-00"
    other = project / "outputs" / "train" / "ferplus" / "2026-11-29_10-00-00"
    demo_best = save_demo_checkpoint(demo, synthetic=True)
    save_demo_checkpoint(other, synthetic=False)  # newer, but not a demo run
    monkeypatch.delenv("FER_CHECKPOINT", raising=False)
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(project / "notebooks")}},
    )
    client.execute(env=dict(os.environ))
    outputs = "".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )
    assert f"checkpoint: {demo_best} (demo run)" in outputs
    assert "trained on this project's synthetic demo faces" in outputs
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
    # Annotated photos, probability bars, synthetic faces, crops, where the network looked.
    assert len(images) == 5


def save_demo_checkpoint(run: Path, synthetic: bool) -> Path:
    """A run folder with a small best checkpoint that records its training data, and the
    results.json that names it."""
    (run / "checkpoints").mkdir(parents=True)
    best = save_lightning_checkpoint(run / "checkpoints" / "best.ckpt", input_size=64)
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["hyper_parameters"]["training_data"] = {
        "dataset": "synthetic" if synthetic else "ferplus",
        "synthetic": synthetic,
    }
    torch.save(checkpoint, best)
    (run / "results.json").write_text(json.dumps({"best_checkpoint": str(best)}))
    return best
