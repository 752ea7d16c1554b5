"""The README's Python snippets run as written.

The ```python blocks of README.md run in order in one namespace (as a reader would paste them
into one Python session), in a working folder laid out as a user's is after the README's own
commands: a finished demo run
(``outputs/train/demo/2026-11-28_10-00-00/`` with ``model.pt``, ``results.json`` and its
checkpoints), photos (``photo.jpg``, ``a.jpg``, ``b.jpg``) and a short video (``clip.mp4``),
the published checkpoint in the download cache and the ImageNet trunk in torch's hub cache
(downloads are switched off, so a snippet that would download fails instead). The networks
are small stand-ins (a ResNet-18 at 64x64) except where a snippet names an architecture.
A snippet that names a file no user would have fails with the file's name.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fer_lightning.inference.samples import astronaut
from fer_lightning.models import create_model
from tests.helpers.inference import save_lightning_checkpoint, write_video

README = Path(__file__).resolve().parents[2] / "README.md"
DEMO_RUN = Path("outputs/train/demo/2026-11-28_10-00-00")
PUBLISHED_NAME = "Z_resmasking_dropout1_rot30_2019Nov30_13.32"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def prepare_workdir(root: Path, snippets: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder and caches a reader of the README has (see the module docstring)."""
    face = astronaut()
    for name in ("photo.jpg", "a.jpg", "b.jpg"):
        cv2.imwrite(str(root / name), face)
    # The astronaut moving across a larger canvas, so that a detector finds a face.
    canvas = np.full((360, 480, 3), 90, np.uint8)
    writer = cv2.VideoWriter(
        str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (480, 360)
    )
    small = cv2.resize(face, (200, 200))
    for i in range(10):
        frame = canvas.copy()
        frame[80:280, 40 + 20 * i : 240 + 20 * i] = small
        writer.write(frame)
    writer.release()
    write_video(root / "clip.avi", frames=6)

    run = root / DEMO_RUN
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    best = save_lightning_checkpoint(run / "checkpoints" / "epoch004-acc0.9976.ckpt")
    shutil.copyfile(best, run / "checkpoints" / "last.ckpt")
    torch.manual_seed(0)
    published = {"net": create_model("resnet18").state_dict(), "arch": "resnet18"}
    torch.save(published, run / "model.pt")
    results = {
        "best_checkpoint": str(best.resolve()),
        "model_file": str((run / "model.pt").resolve()),
    }
    (run / "results.json").write_text(json.dumps(results))

    cache = root / ".cache"
    monkeypatch.setenv("FER_CACHE_DIR", str(cache / "fer_lightning"))
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FER_RELEASE_URL", "http://127.0.0.1:9/offline")
    if "pretrained:resmasking_dropout1" in snippets or "from_pretrained" in snippets:
        (cache / "fer_lightning").mkdir(parents=True)
        torch.manual_seed(0)
        state = create_model("resmasking_dropout1").state_dict()
        torch.save({"net": state}, cache / "fer_lightning" / PUBLISHED_NAME)
    if "imagenet" in snippets:
        hub = cache / "torch" / "hub" / "checkpoints"
        hub.mkdir(parents=True)
        torch.save(create_model("resnet34").state_dict(), hub / "resnet34-b627a593.pth")
    monkeypatch.chdir(root)


def elided_paths(code: str) -> list[str]:
    """String literals of ``code`` that are paths with a ``...`` in them (no user has one)."""
    literals = re.findall(r"""["']([^"'\n]*/\.\.\./[^"'\n]*)["']""", code)
    return literals


@pytest.mark.slow
def test_readme_python_snippets_run_as_written(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    blocks = python_blocks(text)
    assert blocks, "README.md has no ```python blocks"
    prepare_workdir(tmp_path, "\n".join(blocks), monkeypatch)
    namespace: dict[str, object] = {"__name__": "readme"}
    for number, code in enumerate(blocks, start=1):
        elided = elided_paths(code)
        assert not elided, (
            f"README.md python block {number} names {elided}: no user has such a path; name a "
            f"file of the demo run ({DEMO_RUN}/model.pt, checkpoints/last.ckpt) instead."
        )
        try:
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"README.md python block {number} failed:\n{code}") from error
