"""Small FER-format CSVs and images for the data tests, written exactly as the layouts occur."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from fer_lightning.cli.config import CONFIG_DIR

USAGE = ("Training", "PublicTest", "PrivateTest")


def random_faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 48, 48) uint8 faces (all pixel values 0..255 occur) and (n,) labels cycling 0..6."""
    rng = np.random.default_rng(seed)
    faces = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    faces[0, 0, :3] = (0, 255, 7)  # 1- and 3-digit extremes in every file
    return faces, np.arange(n) % 7


def pixel_text(face: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in face.ravel())


def csv_text(
    faces: np.ndarray,
    labels: np.ndarray,
    usage: list[str] | None = None,
    columns: tuple[str, ...] = ("emotion", "pixels", "Usage"),
    sep: str = ",",
    quote_pixels: bool = False,
) -> str:
    """CSV text with the given header spelling/order (e.g. icml's " Usage", " pixels")."""
    lines = [sep.join(columns)]
    for i in range(len(labels)):
        pixels = pixel_text(faces[i])
        if quote_pixels:
            pixels = f'"{pixels}"'
        values = {"emotion": str(int(labels[i])), "pixels": pixels}
        if usage is not None:
            values["usage"] = usage[i]
        lines.append(sep.join(values[c.strip().lower()] for c in columns))
    return "\n".join(lines) + "\n"


def write(path: Path, text: str, crlf: bool = False, bom: bool = False, gz: bool = False) -> Path:
    data = text.replace("\n", "\r\n") if crlf else text
    raw = (b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8")
    if gz:
        raw = gzip.compress(raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return path


def usage_column(n: int) -> list[str]:
    """Training, PublicTest, PrivateTest in turn."""
    return [USAGE[i % 3] for i in range(n)]


def paper_augment() -> dict:
    """The training augmentation of the data configs (conf/data/common.yaml): the paper's."""
    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "data" / "common.yaml").augment)
