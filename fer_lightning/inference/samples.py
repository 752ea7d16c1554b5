"""The bundled sample photo (public domain, see ``assets/README.md``) and mosaics of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_lightning.faces.images import read_image

#: NASA's portrait of astronaut Eileen Collins, 320x320 JPEG, one frontal face.
ASTRONAUT_PATH: Path = Path(__file__).parent / "assets" / "astronaut.jpg"


def astronaut() -> np.ndarray:
    """The bundled astronaut portrait as (320, 320, 3) BGR uint8."""
    return read_image(ASTRONAUT_PATH)


def mosaic(image: np.ndarray, rows: int = 2, cols: int = 2) -> np.ndarray:
    """``image`` (H, W, C) tiled ``rows`` x ``cols`` times: (rows*H, cols*W, C)."""
    return np.ascontiguousarray(np.tile(image, (rows, cols, 1)))
