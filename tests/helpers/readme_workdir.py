"""A working folder laid out as a README reader's is, for the README snippet and command tests.

After the README's own commands a reader has: a finished demo run
(``outputs/train/demo/2026-11-28_10-00-00/`` with ``model.pt``, ``results.json`` and its
checkpoints), photos (``photo.jpg``, ``a.jpg``, ``b.jpg``, a ``photos/`` folder) and short
videos (``clip.mp4``, ``clip.avi``); optionally the published checkpoint in the download cache
and the ImageNet trunk in torch's hub cache (downloads are switched off, so anything that would
download fails instead). The networks are small stand-ins (a ResNet-18 at 64x64) except where an
architecture is named. ``write_datasets`` adds the data the README's data commands read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fer_lightning.data.convert import convert
from fer_lightning.data.synthetic import generate_synthetic_ferplus
from fer_lightning.inference.samples import astronaut
from fer_lightning.labels import EMOTIONS
from fer_lightning.models import create_model
from tests.helpers.inference import save_lightning_checkpoint, write_video

DEMO_RUN = Path("outputs/train/demo/2026-11-28_10-00-00")
BEST_CHECKPOINT = "best.ckpt"
DEMO_TRAINING_DATA = {"dataset": "synthetic", "synthetic": True}
PUBLISHED_NAME = "Z_resmasking_dropout1_rot30_2019Nov30_13.32"
# JAFFE's expression codes and FACES' (FACES has no surprise); ten people each, so that the
# ten-fold subject splits of data=jaffe and data=faces have someone in every fold.
JAFFE_CODES = ("AN", "DI", "FE", "HA", "SA", "SU", "NE")
FACES_CODES = ("a", "d", "f", "h", "s", "n")
SUBJECTS = 10


def write_photos_and_videos(root: Path) -> None:
    face = astronaut()
    for name in ("photo.jpg", "a.jpg", "b.jpg"):
        cv2.imwrite(str(root / name), face)
    (root / "photos").mkdir()
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(root / "photos" / name), face)
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


def write_demo_run(root: Path) -> Path:
    """The demo run's folder as training leaves it; returns it."""
    run = root / DEMO_RUN
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    best = save_lightning_checkpoint(run / "checkpoints" / BEST_CHECKPOINT)
    # What the demo learned from, as training records it (the shared provenance contract).
    checkpoint = torch.load(best, weights_only=True)
    checkpoint["hyper_parameters"]["training_data"] = DEMO_TRAINING_DATA
    torch.save(checkpoint, best)
    shutil.copyfile(best, run / "checkpoints" / "last.ckpt")
    torch.manual_seed(0)
    published = {
        "net": create_model("resnet18").state_dict(),
        "arch": "resnet18",
        "training_data": DEMO_TRAINING_DATA,
    }
    torch.save(published, run / "model.pt")
    results = {
        "status": "completed",
        "training_data": DEMO_TRAINING_DATA,
        "best_checkpoint": str(best.resolve()),
        "model_file": str((run / "model.pt").resolve()),
    }
    (run / "results.json").write_text(json.dumps(results))
    return run


def write_caches(root: Path, published: bool, imagenet: bool) -> dict[str, str]:
    """The download caches under ``root/.cache`` (filled as asked); the environment that points
    the project and torch at them and keeps every download offline."""
    cache = root / ".cache"
    (cache / "fer_lightning").mkdir(parents=True, exist_ok=True)
    if published:
        torch.manual_seed(0)
        state = create_model("resmasking_dropout1").state_dict()
        torch.save({"net": state}, cache / "fer_lightning" / PUBLISHED_NAME)
    if imagenet:
        hub = cache / "torch" / "hub" / "checkpoints"
        hub.mkdir(parents=True)
        torch.save(create_model("resnet34").state_dict(), hub / "resnet34-b627a593.pth")
    return {
        "FER_CACHE_DIR": str(cache / "fer_lightning"),
        "TORCH_HOME": str(cache / "torch"),
        "HF_HUB_OFFLINE": "1",
        "FER_RELEASE_URL": "http://127.0.0.1:9/offline",
    }


def write_image_sources(root: Path) -> dict[str, Path]:
    """Image folders in the layouts ``prepare jaffe|faces|folder`` read (named as the real
    datasets name their files); returns kind -> folder."""
    gray = cv2.cvtColor(cv2.resize(astronaut(), (96, 96)), cv2.COLOR_BGR2GRAY)
    jaffe, faces, folder = root / "jaffe", root / "faces", root / "folder"
    for number in range(SUBJECTS):
        person = f"K{chr(ord('A') + number)}"
        for index, code in enumerate(JAFFE_CODES):
            path = jaffe / person / f"{person}.{code}1.{number * 7 + index}.tiff"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.roll(gray, index, axis=1))
        for index, code in enumerate(FACES_CODES):
            path = faces / f"{number + 1:03d}_y_m_{code}_a.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.roll(gray, index, axis=0))
    for split in ("train", "val", "test"):
        for index, emotion in enumerate(EMOTIONS):
            for copy in range(2):
                path = folder / split / emotion / f"{copy}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), np.roll(gray, index + copy, axis=1))
    return {"jaffe": jaffe, "faces": faces, "folder": folder}


def write_datasets(root: Path) -> dict[str, Path]:
    """``data/`` as a reader's is after getting the data: FER2013 (``fer2013.csv`` with
    Training, PublicTest and PrivateTest rows) with its FER+ votes beside it (``fer2013new.csv``),
    and JAFFE and FACES converted by ``prepare``; the image folders ``prepare`` reads are under
    ``root/src`` (returned, kind -> folder)."""
    generate_synthetic_ferplus(
        root / "data" / "fer2013", train_per_class=4, val_per_class=2, test_per_class=2, seed=1
    )
    sources = write_image_sources(root / "src")
    convert("jaffe", sources["jaffe"], root / "data" / "jaffe" / "jaffe.csv")
    convert("faces", sources["faces"], root / "data" / "faces" / "faces.csv")
    return sources


def prepare_workdir(root: Path, snippets: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder and caches a reader of the README has (see the module docstring), with the
    caches the ``snippets`` need; the environment points at them and ``root`` is the working
    directory."""
    write_photos_and_videos(root)
    write_demo_run(root)
    published = "pretrained:resmasking_dropout1" in snippets or "from_pretrained" in snippets
    env = write_caches(root, published=published, imagenet="imagenet" in snippets)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(root)
