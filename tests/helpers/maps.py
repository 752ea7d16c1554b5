"""Synthetic faces framed off the crop's centre, and how much of a map's mass falls on the
features that decide their class: the honest-maps tests (tests/integration/test_explain_mass.py,
tests/unit/test_explain.py).

Centred, the synthetic faces are nearly symmetric about the crop's centre, up-down as well as
left-right (brows at -0.46, mouth at +0.47 of the head's half height), so a map flipped or
transposed lands on the features again and region mass cannot tell it from the right one.
Framed here, each head is 1.3 times larger and moved 10 px left or right and 5 px the other way
up or down (one of the two anti-diagonal corners, at random): flipped up-down, mirrored or
transposed, the features land where this face has none. The larger head also fills more of the
crop, so that a map that knows only where the head is stays under twice the features' share.
"""

from __future__ import annotations

import numpy as np

from fer_lightning.data.synthetic import draw_face_parts
from fer_lightning.labels import EMOTIONS

ZOOM = 1.3
OFFSET = (10.0, 5.0)  # pixels of the 48x48 crop: (right, up) or (left, down)


def framed_faces(
    count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``count`` framed faces, the classes in turn and shuffled: faces (N, 48, 48) uint8,
    class-deciding regions and heads (N, 48, 48) float32 0/1, labels (N,) int64."""
    labels = rng.permutation(np.arange(count) % len(EMOTIONS))
    corners = rng.choice((-1.0, 1.0), count)
    parts = [
        draw_face_parts(int(label), rng, offset=(side * OFFSET[0], -side * OFFSET[1]), zoom=ZOOM)
        for label, side in zip(labels, corners, strict=True)
    ]
    return (
        np.stack([p.face for p in parts]),
        np.stack([p.regions for p in parts]).astype(np.float32),
        np.stack([p.head for p in parts]).astype(np.float32),
        labels.astype(np.int64),
    )


def concentration(maps: np.ndarray, regions: np.ndarray) -> float:
    """Mean over faces of (share of the map's mass inside the regions) / (their share of the
    face crop's area): ``maps`` and ``regions`` (N, 48, 48). 1: no better than uniform."""
    share = (maps * regions).sum((1, 2)) / np.maximum(maps.sum((1, 2)), 1e-12)
    return float((share / regions.mean((1, 2))).mean())
