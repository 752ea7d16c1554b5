"""Shared pieces of the inference tests: cheap checkpoints, odd image files, a short video."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch

from fer_lightning.inference.samples import astronaut, mosaic
from fer_lightning.models import create_model

SMALL_ARCH, SMALL_INPUT = "resnet18", 64


def installed_detector() -> str:
    """A real detector for end-to-end tests: yunet (Python <= 3.11), else dlib, else skip.
    ``FER_TEST_DETECTOR=dlib`` runs them with dlib where both are installed."""
    import os

    import pytest

    from fer_lightning.inference import available_detectors

    for name in (os.environ.get("FER_TEST_DETECTOR", "yunet"), "yunet", "dlib"):
        if name in available_detectors():
            return name
    pytest.skip("no face detector installed (pip install 'fer-lightning[yunet]' or '[dlib]')")


def save_published_checkpoint(path: Path, arch: str = SMALL_ARCH, seed: int = 0) -> Path:
    """A freshly initialised ``arch`` saved as the published RMN format ({"net": state})."""
    torch.manual_seed(seed)
    torch.save({"net": create_model(arch).state_dict()}, path)
    return path


def save_lightning_checkpoint(
    path: Path, arch: str = SMALL_ARCH, input_size: int = SMALL_INPUT, seed: int = 0
) -> Path:
    """The layout of this project's Lightning checkpoints: ``net.``-prefixed state dict and
    hyperparameters naming the architecture and input size."""
    torch.manual_seed(seed)
    state = {f"net.{k}": v for k, v in create_model(arch).state_dict().items()}
    hyper = {"arch": arch, "num_classes": 7, "input_size": input_size}
    torch.save({"state_dict": state, "hyper_parameters": hyper}, path)
    return path


def png_with_claimed_size(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height`` pixels but holds only a little data:
    a "huge" image that costs nothing to create."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    data = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


def write_mixed_folder(root: Path) -> dict[str, str]:
    """Good and bad files under ``root``; returns relative name -> what it is."""
    face = astronaut()
    (root / "nested").mkdir(parents=True)
    cv2.imwrite(str(root / "face.jpg"), face)
    cv2.imwrite(str(root / "nested" / "four.png"), mosaic(face))
    cv2.imwrite(str(root / "gray.png"), cv2.cvtColor(face, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "rgba.png"), cv2.cvtColor(face, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(root / "deep.png"), face.astype(np.uint16) * 257)
    cv2.imwrite(str(root / "blank.png"), np.full_like(face, 128))
    cv2.imwrite(str(root / "dot.png"), face[:1, :1])
    jpeg = (root / "face.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "text.jpg").write_text("this is not a picture")
    (root / "notes.txt").write_text("not an image either, and without an image suffix")
    png_with_claimed_size(root / "huge.png", 20_000, 20_000)
    return {
        "face.jpg": "ok",
        "nested/four.png": "ok",
        "gray.png": "ok",
        "rgba.png": "ok",
        "deep.png": "ok",
        "blank.png": "ok, no face",
        "dot.png": "bad",
        "truncated.jpg": "bad",
        "text.jpg": "bad",
        "huge.png": "bad",
        "notes.txt": "skipped",
    }


def write_video(path: Path, frames: int = 12, fps: float = 10.0) -> Path:
    """A short MJPG video: the astronaut sliding right, with a blank frame every fourth."""
    face = astronaut()
    height, width = face.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full_like(face, 90) if i % 4 == 3 else np.roll(face, 3 * i, axis=1)
        writer.write(frame)
    writer.release()
    return path
