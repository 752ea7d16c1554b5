"""Annotating images: a box, the label and a small probability bar chart per face."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
BOX_COLOUR = (80, 220, 80)  # BGR
BAR_COLOUR = (60, 180, 255)
TEXT_COLOUR = (255, 255, 255)
PANEL_COLOUR = (30, 30, 30)


class LabelledFace(Protocol):
    box: tuple[int, int, int, int]
    label: str
    probs: dict[str, float]


def draw_faces(image_bgr: np.ndarray, faces: Sequence[LabelledFace]) -> np.ndarray:
    """A copy of ``image_bgr`` (H, W, 3) uint8 with, per face, its box, ``label p%`` above it
    and a bar per class beside it (right of the box, or left where the right has no room).
    A tracked face (with ``track_id`` and ``smoothed_probs``) shows ``#id label p%`` and its
    bars from the smoothed probabilities."""
    canvas = image_bgr.copy()
    height, width = canvas.shape[:2]
    # Text and lines scale with the image so that they stay legible on large photos.
    scale = max(0.35, min(width, height) / 900)
    thickness = max(1, round(scale * 2))
    for face in faces:
        x0, y0, x1, y1 = (int(v) for v in face.box)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), BOX_COLOUR, thickness)
        probs = getattr(face, "smoothed_probs", None) or face.probs
        label = max(probs, key=probs.__getitem__) if probs is not face.probs else face.label
        track_id = getattr(face, "track_id", None)
        caption = f"{label} {100 * probs[label]:.0f}%"
        if track_id is not None:
            caption = f"#{track_id} {caption}"
        layout = caption_layout(caption, (x0, y0, x1, y1), (width, height), scale, thickness)
        cv2.rectangle(
            canvas, (layout.left, layout.top), (layout.right, layout.bottom), BOX_COLOUR, -1
        )
        cv2.putText(
            canvas,
            caption,
            (layout.left + 2, layout.baseline_y),
            FONT,
            layout.scale,
            (0, 0, 0),
            layout.thickness,
        )
        _draw_bars(canvas, probs, (x0, y0, x1, y1), scale)
    return canvas


@dataclass(frozen=True)
class CaptionLayout:
    """Where a caption goes: its background ``left, top, right, bottom`` (inclusive pixels),
    the text's ``baseline_y``, and the font ``scale`` and ``thickness`` it is drawn with."""

    left: int
    top: int
    right: int
    bottom: int
    baseline_y: int
    scale: float
    thickness: int


def caption_layout(
    caption: str,
    box: tuple[int, int, int, int],
    image_size: tuple[int, int],
    scale: float,
    thickness: int,
) -> CaptionLayout:
    """The caption of ``box`` kept whole inside an image of ``image_size`` (width, height):
    above the box where there is room, else below it, else at the image's edge; moved left
    from the right edge (and right from the left one); drawn smaller when it is wider than
    the image."""
    width, height = image_size
    x0, y0, _, y1 = box
    (text_w, text_h), baseline = cv2.getTextSize(caption, FONT, scale, thickness)
    while text_w + 4 > width and scale > 0.1:
        scale, thickness = scale * 0.8, 1
        (text_w, text_h), baseline = cv2.getTextSize(caption, FONT, scale, thickness)
    box_w, box_h = text_w + 4, text_h + baseline + 2
    if y0 - box_h >= 0:
        top = y0 - box_h
    elif y1 + 2 + box_h <= height:
        top = y1 + 2
    else:
        top = min(max(0, y0), max(0, height - box_h))
    left = min(max(0, x0), max(0, width - box_w))
    return CaptionLayout(
        left=left,
        top=top,
        right=min(width, left + box_w) - 1,
        bottom=min(height, top + box_h) - 1,
        baseline_y=top + text_h + 1,
        scale=scale,
        thickness=thickness,
    )


def _draw_bars(
    canvas: np.ndarray, probs: dict[str, float], box: tuple[int, int, int, int], scale: float
) -> None:
    height, width = canvas.shape[:2]
    x0, y0, x1, _ = box
    font_scale = scale * 0.8
    (label_w, row_h), _ = cv2.getTextSize("surprise", FONT, font_scale, 1)
    row_h += 4
    bar_w = max(20, round(60 * scale))
    panel_w = label_w + bar_w + 8
    panel_h = row_h * len(probs) + 4
    left = x1 + 4 if x1 + 4 + panel_w <= width else max(0, x0 - 4 - panel_w)
    top = min(max(0, y0), max(0, height - panel_h))
    right, bottom = min(width, left + panel_w), min(height, top + panel_h)
    # A translucent panel keeps the bars readable on any background.
    region = canvas[top:bottom, left:right]
    region[:] = (0.4 * region + 0.6 * np.array(PANEL_COLOUR)).astype(np.uint8)
    for i, (label, p) in enumerate(probs.items()):
        y = top + 2 + i * row_h
        cv2.putText(
            canvas, label, (left + 2, y + row_h - 4), FONT, font_scale, TEXT_COLOUR, 1, cv2.LINE_AA
        )
        bar_x = left + label_w + 6
        cv2.rectangle(
            canvas,
            (bar_x, y + 2),
            (bar_x + max(1, round(bar_w * float(p))), y + row_h - 3),
            BAR_COLOUR,
            -1,
        )


class ExplainedFace(LabelledFace, Protocol):
    def image_map(self, name: str | None = ...) -> np.ndarray: ...


#: How strongly a map's colour covers the face where the map is 1.
MAP_OPACITY = 0.6


def draw_explanations(
    image_bgr: np.ndarray, faces: Sequence[ExplainedFace], name: str = "gradcam"
) -> np.ndarray:
    """A copy of ``image_bgr`` (H, W, 3) uint8 with each face's map ``name`` (its
    ``image_map``, (H, W) in [0, 1]) over it in the JET colours (red: looked at most), blended
    in proportion to the map, then the boxes, labels and scores of :func:`draw_faces`."""
    canvas = image_bgr.astype(np.float32)
    for face in faces:
        values = face.image_map(name)
        colours = cv2.applyColorMap(np.round(values * 255).astype(np.uint8), cv2.COLORMAP_JET)
        weight = (MAP_OPACITY * values)[..., None]
        canvas = canvas * (1 - weight) + colours.astype(np.float32) * weight
    return draw_faces(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), faces)
