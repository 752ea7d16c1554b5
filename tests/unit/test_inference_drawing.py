"""Annotated images: each face's caption stays whole inside the image (issue 20: labels were
cut off at the edge, "happines")."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from fer_lightning.inference.drawing import BOX_COLOUR, FONT, caption_layout, draw_faces
from fer_lightning.labels import EMOTIONS


@dataclass
class Face:
    box: tuple[int, int, int, int]
    label: str
    probs: dict[str, float]


def _face(box, label="happy"):
    probs = dict.fromkeys(EMOTIONS, 0.0)
    probs[label] = 1.0
    return Face(box, label, probs)


@pytest.mark.parametrize(("width", "height"), [(320, 240), (90, 60), (48, 48)])
def test_captions_at_every_edge_stay_whole_inside_the_image(width, height):
    caption = "happiness 100%"
    scale = max(0.35, min(width, height) / 900)
    xs = (-30, 0, width // 2, width - 10, width - 1)
    ys = (-20, 0, height // 2, height - 5)
    for x0, y0 in itertools.product(xs, ys):
        box = (x0, y0, min(width, x0 + 40), min(height, y0 + 40))
        layout = caption_layout(caption, box, (width, height), scale, 1)
        (text_w, text_h), _ = cv2.getTextSize(caption, FONT, layout.scale, layout.thickness)
        assert layout.left >= 0 and layout.right <= width - 1, box
        assert layout.top >= 0 and layout.bottom <= height - 1, box
        assert layout.left + 2 + text_w <= width, box  # the text's last letter included
        assert layout.baseline_y - text_h >= 0, box


def test_a_face_at_the_right_edge_gets_its_whole_caption_drawn():
    image = np.full((240, 200, 3), 128, np.uint8)
    box = (150, 60, 199, 110)
    drawn = draw_faces(image, [_face(box, "happy")])
    caption = "happy 100%"
    scale = max(0.35, 200 / 900)
    (text_w, _), _ = cv2.getTextSize(caption, FONT, scale, 1)
    # The caption's background, above the box: as wide as its text, not cut at the edge.
    above = drawn[: box[1] - 1]
    columns = np.flatnonzero((above == BOX_COLOUR).all(axis=2).any(axis=0))
    assert columns.size >= text_w + 4
    assert columns.max() == 199  # moved left to end at the edge
