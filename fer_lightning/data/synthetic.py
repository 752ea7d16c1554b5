"""Procedural 48x48 grayscale faces whose expression is drawn by brows, eyes and mouth.

The embedded dataset of the demo experiment and of the tests: it runs anywhere, deterministic by
seed. Every image varies head size, position, rotation, skin/background brightness, feature
thickness, expression intensity, a lighting gradient, blur and noise, so only the geometry of
brows, eyes and mouth tells the classes apart (no single pixel statistic does).

:func:`generate_synthetic_ferplus` also writes FER+-format votes for such faces, so that the FER+
path (``data=ferplus``) runs offline too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from fer_lightning.data.csv_reader import USAGE_NAMES, read_head
from fer_lightning.data.csv_writer import write_atomically, write_face_csv
from fer_lightning.data.ferplus import HEADER
from fer_lightning.labels import EMOTIONS, FACE_SIZE, FERPLUS_EMOTIONS

SYNTHETIC_VERSION = 3  # bump when the drawing changes, so cached CSVs are regenerated
_CANVAS = 96  # drawn at twice the size, then area-downsampled: anti-aliased strokes
_SHIFT = 4  # fixed-point bits for cv2 drawing at sub-pixel positions
# The column the generated face CSVs carry ("true" on every row), so that synthetic faces are
# recognised wherever a configuration points at them (the face reader ignores it).
SYNTHETIC_COLUMN = "synthetic"


def has_synthetic_marker(path: str | Path) -> bool:
    """Whether the face CSV ``path`` was generated here (its header has the marker column)."""
    path = Path(path)
    if not path.is_file():
        return False
    head = read_head(path)
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    return SYNTHETIC_COLUMN in [n.strip().strip('"').strip().lower() for n in first.split(",")]


def _pt(x: float, y: float) -> tuple[int, int]:
    return round(x * (1 << _SHIFT)), round(y * (1 << _SHIFT))


def _poly(img: np.ndarray, pts: list[tuple[float, float]], color: float, thick: int) -> None:
    arr = np.array([_pt(x, y) for x, y in pts], dtype=np.int32)
    cv2.polylines(img, [arr], False, color, thick, cv2.LINE_AA, _SHIFT)


def _curve(cx: float, cy: float, half_w: float, bend: float, n: int = 9) -> list:
    """Points of a parabola through (cx +- half_w, cy) whose middle is ``bend`` lower."""
    xs = np.linspace(-1.0, 1.0, n)
    return [(cx + x * half_w, cy + bend * (1 - x * x)) for x in xs]


@dataclass
class Head:
    """Where one face is drawn on the canvas, and its colours and strokes."""

    cx: float
    cy: float
    a: float  # half width
    b: float  # half height
    background: float
    skin: float
    ink: float
    thick: int
    k: float  # expression intensity


@dataclass
class Expression:
    """The features an emotion moves (neutral: the defaults)."""

    eye_open: float = 0.55  # eye height / width
    brow_lift: float = 0.0  # whole brow up (pixels, negative = down)
    brow_tilt: float = 0.0  # inner end up (+) or down (-), pixels
    brow_arch: float = 0.0
    mouth: str = "line"
    bend: float = 0.0


def draw_face(
    label: int,
    rng: np.random.Generator,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    zoom: float = 1.0,
) -> np.ndarray:
    """One face showing ``label`` (FER order): (48, 48) uint8.

    ``offset`` (x right, y down, pixels of the 48x48 face) and ``zoom`` frame the head
    differently in the crop, from the same random draws: the head is ``zoom`` times larger
    about the crop's centre, then moved by ``offset``. The defaults draw the faces of the demo
    data, unchanged."""
    return _draw(label, rng, None, None, offset, zoom)


def draw_face_with_regions(
    label: int,
    rng: np.random.Generator,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    zoom: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`draw_face` (the same face for the same ``rng`` state and framing) and where the
    features that decide its class are: (48, 48) uint8 face, (48, 48) bool mask.

    The emotions differ only in the eyes, the brows and the mouth (and disgust's wrinkles over
    the nose); the head, the nose and the lighting carry no class. The mask covers those
    strokes widened by about 1.5 pixels of the 48x48 face on every side."""
    parts = draw_face_parts(label, rng, offset=offset, zoom=zoom)
    return parts.face, parts.regions


@dataclass(frozen=True)
class FaceParts:
    """One drawn face and where its parts are, each (48, 48): ``face`` uint8, ``regions`` bool
    (the class-deciding strokes, :func:`draw_face_with_regions`), ``head`` bool (the head's
    ellipse: where a map that knows only where the face is would look)."""

    face: np.ndarray
    regions: np.ndarray
    head: np.ndarray


def draw_face_parts(
    label: int,
    rng: np.random.Generator,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    zoom: float = 1.0,
) -> FaceParts:
    """:func:`draw_face_with_regions` (the same face and regions for the same ``rng`` state
    and framing) and the head's mask."""
    regions = np.zeros((_CANVAS, _CANVAS), dtype=np.float32)
    head = np.zeros((_CANVAS, _CANVAS), dtype=np.float32)
    face = _draw(label, rng, regions, head, offset, zoom)
    small = [
        cv2.resize(m, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA) for m in (regions, head)
    ]
    return FaceParts(face, small[0] > 0.25, small[1] > 0.5)


# The class-deciding strokes are drawn this much thicker (canvas pixels) into the region mask.
_REGION_WIDEN = 6


def _draw(
    label: int,
    rng: np.random.Generator,
    regions: np.ndarray | None,
    head_mask: np.ndarray | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    zoom: float = 1.0,
) -> np.ndarray:
    """The face on the canvas, photographed to 48x48; with ``regions`` (the canvas's shape,
    zeros) the class-deciding strokes are also drawn there (1, widened) and rotated as the
    face is, in place; likewise the head's ellipse into ``head_mask``. ``offset`` and ``zoom``:
    :func:`draw_face`."""
    head = _random_head(rng)
    if tuple(offset) != (0.0, 0.0) or zoom != 1.0:
        # Drawn from the same random numbers, so the defaults leave every image as it was.
        scale, middle = _CANVAS / FACE_SIZE, _CANVAS / 2
        head = replace(
            head,
            cx=middle + (head.cx - middle) * zoom + offset[0] * scale,
            cy=middle + (head.cy - middle) * zoom + offset[1] * scale,
            a=head.a * zoom,
            b=head.b * zoom,
        )
    img = np.full((_CANVAS, _CANVAS), head.background, dtype=np.float32)
    cv2.ellipse(
        img,
        _pt(head.cx, head.cy),
        _pt(head.a, head.b),
        0,
        0,
        360,
        head.skin,
        -1,
        cv2.LINE_AA,
        _SHIFT,
    )
    expression = _expression(EMOTIONS[label], head)
    eye_w = 0.16 * head.a * rng.uniform(0.9, 1.1)
    mouth_w = 0.3 * head.a * rng.uniform(0.9, 1.1)
    state = rng.bit_generator.state
    _draw_eyes_and_brows(img, head, expression, eye_w)
    _draw_mouth(img, head, expression, mouth_w, rng)
    if regions is not None:
        # The same strokes again, from the same random state, in 1 and wider.
        after = rng.bit_generator.state
        rng.bit_generator.state = state
        marker = replace(head, ink=1.0, thick=head.thick + _REGION_WIDEN)
        _draw_eyes_and_brows(regions, marker, expression, eye_w)
        _draw_mouth(regions, marker, expression, mouth_w, rng)
        rng.bit_generator.state = after
    # The nose, the same for everyone.
    cx, cy, a, b = head.cx, head.cy, head.a, head.b
    _poly(
        img, [(cx, cy - 0.05 * b), (cx - 0.05 * a, cy + 0.2 * b), (cx, cy + 0.22 * b)], head.ink, 1
    )
    angle = rng.uniform(-10, 10)
    if regions is not None:
        regions[:] = _rotate(regions, head, angle, 0.0)
    if head_mask is not None:
        cv2.ellipse(
            head_mask,
            _pt(head.cx, head.cy),
            _pt(head.a, head.b),
            0,
            0,
            360,
            1.0,
            -1,
            cv2.LINE_AA,
            _SHIFT,
        )
        head_mask[:] = _rotate(head_mask, head, angle, 0.0)
    return _photograph(img, head, angle, rng)


def _random_head(rng: np.random.Generator) -> Head:
    background = rng.uniform(0, 255)
    skin = rng.uniform(110, 235)
    a = rng.uniform(27, 34)
    b = a * rng.uniform(1.12, 1.32)
    cx, cy = _CANVAS / 2 + rng.uniform(-5, 5), _CANVAS / 2 + rng.uniform(-3, 5)
    ink = skin - rng.uniform(75, 110)
    thick = int(rng.integers(3, 5))
    k = rng.uniform(0.8, 1.2)
    return Head(cx, cy, a, b, background, skin, ink, thick, k)


def _expression(emotion: str, head: Head) -> Expression:
    a, k = head.a, head.k
    if emotion == "happy":
        return Expression(eye_open=0.4, mouth="curve", bend=0.28 * a * k)
    if emotion == "sad":
        return Expression(brow_tilt=0.18 * a * k, mouth="curve", bend=-0.22 * a * k)
    if emotion == "angry":
        return Expression(eye_open=0.35, brow_lift=-0.06 * a, brow_tilt=-0.3 * a * k)
    if emotion == "surprise":
        return Expression(eye_open=1.0, brow_lift=0.2 * a * k, brow_arch=0.1 * a, mouth="round")
    if emotion == "fear":
        return Expression(
            eye_open=0.9, brow_lift=0.12 * a * k, brow_tilt=0.16 * a * k, mouth="stretched"
        )
    if emotion == "disgust":
        return Expression(eye_open=0.3, brow_lift=-0.08 * a, mouth="sneer")
    return Expression()


def _draw_eyes_and_brows(img: np.ndarray, head: Head, expr: Expression, eye_w: float) -> None:
    eye_y, eye_dx = head.cy - 0.22 * head.b, 0.38 * head.a
    brow_y, brow_w = eye_y - 0.24 * head.b, 0.2 * head.a
    for side in (-1.0, 1.0):
        ex = head.cx + side * eye_dx
        axes = _pt(eye_w, max(eye_w * expr.eye_open, 1.0))
        cv2.ellipse(img, _pt(ex, eye_y), axes, 0, 0, 360, head.ink, -1, cv2.LINE_AA, _SHIFT)
        inner, outer = ex - side * brow_w, ex + side * brow_w
        y0 = brow_y - expr.brow_lift
        brow = [
            (inner, y0 - expr.brow_tilt),
            (ex, y0 - expr.brow_arch - expr.brow_tilt / 2),
            (outer, y0),
        ]
        _poly(img, brow, head.ink, head.thick)


def _draw_mouth(
    img: np.ndarray, head: Head, expr: Expression, mouth_w: float, rng: np.random.Generator
) -> None:
    cx, cy, a, b, k, ink, thick = head.cx, head.cy, head.a, head.b, head.k, head.ink, head.thick
    mouth_y = cy + 0.47 * b
    if expr.mouth == "line":
        _poly(img, [(cx - mouth_w, mouth_y), (cx + mouth_w, mouth_y)], ink, thick)
    elif expr.mouth == "curve":
        _poly(img, _curve(cx, mouth_y - expr.bend / 2, mouth_w, expr.bend), ink, thick)
    elif expr.mouth == "round":
        axes = _pt(0.5 * mouth_w, 0.65 * mouth_w * k)
        cv2.ellipse(img, _pt(cx, mouth_y), axes, 0, 0, 360, ink, -1, cv2.LINE_AA, _SHIFT)
    elif expr.mouth == "stretched":
        axes = _pt(1.3 * mouth_w, 0.25 * mouth_w * k + 1.0)
        cv2.ellipse(img, _pt(cx, mouth_y), axes, 0, 0, 360, ink, -1, cv2.LINE_AA, _SHIFT)
    elif expr.mouth == "sneer":
        # Upper lip raised on one side, and wrinkles across the bridge of the nose.
        side = rng.choice((-1.0, 1.0))
        lip = [
            (cx - side * mouth_w, mouth_y + 0.04 * a),
            (cx, mouth_y - 0.02 * a),
            (cx + side * 0.5 * mouth_w, mouth_y - 0.22 * a * k),
            (cx + side * mouth_w, mouth_y - 0.12 * a * k),
        ]
        _poly(img, lip, ink, thick)
        for j in range(3):
            wy = cy - 0.04 * b + j * 0.07 * b
            _poly(img, [(cx - 0.12 * a, wy), (cx + 0.12 * a, wy)], ink, max(thick - 1, 1))


def _rotate(img: np.ndarray, head: Head, angle: float, border: float) -> np.ndarray:
    matrix = cv2.getRotationMatrix2D((head.cx, head.cy), angle, 1.0)
    return cv2.warpAffine(
        img, matrix, (_CANVAS, _CANVAS), flags=cv2.INTER_LINEAR, borderValue=border
    )


def _photograph(img: np.ndarray, head: Head, angle: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate by ``angle``, downsample to 48x48, light, blur and add noise: the canvas as a
    camera sees it."""
    img = _rotate(img, head, angle, head.background)
    img = cv2.resize(img, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    # Lighting: a linear gradient in a random direction.
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-1.0, 1.0, FACE_SIZE, dtype=np.float32)
    gradient = np.cos(theta) * ramp[None, :] + np.sin(theta) * ramp[:, None]
    img += gradient * rng.uniform(0, 35)
    sigma = rng.uniform(0.0, 0.7)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0.0, rng.uniform(2, 6), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def make_split(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` faces of every class, shuffled: faces (N, 48, 48) uint8, labels (N,) int64."""
    labels = rng.permutation(np.repeat(np.arange(len(EMOTIONS), dtype=np.int64), per_class))
    faces = np.empty((labels.size, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    for i, label in enumerate(labels):
        faces[i] = draw_face(int(label), rng)
    return faces, labels


def synthetic_csv_path(
    folder: str | Path, train_per_class: int, val_per_class: int, test_per_class: int, seed: int
) -> Path:
    """Where the CSV for these settings lives (the name encodes them, so sizes never mix)."""
    name = (
        f"synthetic-v{SYNTHETIC_VERSION}-seed{seed}-"
        f"{train_per_class}-{val_per_class}-{test_per_class}.csv"
    )
    return Path(folder) / name


def _check_sizes(train_per_class: int, val_per_class: int, test_per_class: int) -> None:
    for name, value in (("train", train_per_class), ("val", val_per_class)):
        if value < 1:
            raise ValueError(f"synthetic.{name}_per_class must be >= 1, not {value}.")
    if test_per_class < 0:
        raise ValueError(f"synthetic.test_per_class must be >= 0, not {test_per_class}.")


def make_splits(
    train_per_class: int, val_per_class: int, test_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces (N, 48, 48) uint8, labels (N,) and Usage codes (N,) int8 of the three splits in
    order. Each split has its own random stream (``seed``, split index), so changing the size
    of one split leaves the images of the others unchanged."""
    _check_sizes(train_per_class, val_per_class, test_per_class)
    faces, labels, usage = [], [], []
    for code, per_class in enumerate((train_per_class, val_per_class, test_per_class)):
        if per_class == 0:
            continue
        split_faces, split_labels = make_split(per_class, np.random.default_rng([seed, code]))
        faces.append(split_faces)
        labels.append(split_labels)
        usage.append(np.full(split_labels.size, code, dtype=np.int8))
    return np.concatenate(faces), np.concatenate(labels), np.concatenate(usage)


def generate_synthetic_csv(
    folder: str | Path,
    *,
    train_per_class: int,
    val_per_class: int,
    test_per_class: int,
    seed: int,
) -> Path:
    """Write (if missing) a FER2013-format CSV with ``Usage`` and return its path."""
    _check_sizes(train_per_class, val_per_class, test_per_class)
    path = synthetic_csv_path(folder, train_per_class, val_per_class, test_per_class, seed)
    if path.is_file():
        return path
    faces, labels, usage = make_splits(train_per_class, val_per_class, test_per_class, seed)
    return write_face_csv(path, faces, labels, usage, _marker(labels.size))


def _marker(rows: int) -> dict[str, list[str]]:
    return {SYNTHETIC_COLUMN: ["true"] * rows}


# ---------------------------------------------------------------------------- FER+ votes

# Each FER2013 class (the synthetic faces' labels) -> its FER+ class.
FER_TO_FERPLUS: tuple[int, ...] = tuple(
    FERPLUS_EMOTIONS.index(name)
    for name in ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
)
_ANNOTATORS = 10
_UNKNOWN, _NOT_A_FACE = len(FERPLUS_EMOTIONS), len(FERPLUS_EMOTIONS) + 1
# Shares of the rows that imitate FER+'s hard cases: dropped non-faces (no image name),
# "unknown" majorities and two-way ties.
_SHARE_NOT_A_FACE, _SHARE_UNKNOWN, _SHARE_TIE = 0.04, 0.04, 0.06


def ferplus_votes(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """FER+-style votes of 10 annotators for faces of FER2013-order ``labels``: ((N, 10) int64
    counts in fer2013new.csv's column order, (N,) bool "has an image name").

    Most rows: each annotator names the true class with a per-face probability of 0.55-0.95,
    else another emotion (contempt included) or, rarely, unknown. About 4% are non-faces (all
    NF votes and no image name, as FER+ marks dropped images), 4% have an unknown majority and
    6% tie two emotions at 4 votes each."""
    labels = np.asarray(labels, dtype=np.int64)
    n, classes = labels.size, len(FERPLUS_EMOTIONS) + 2
    true = np.asarray(FER_TO_FERPLUS)[labels]
    votes = np.zeros((n, classes), dtype=np.int64)
    kind = rng.random(n)
    not_a_face = kind < _SHARE_NOT_A_FACE
    unknown = (kind >= _SHARE_NOT_A_FACE) & (kind < _SHARE_NOT_A_FACE + _SHARE_UNKNOWN)
    tie = (kind >= _SHARE_NOT_A_FACE + _SHARE_UNKNOWN) & (
        kind < _SHARE_NOT_A_FACE + _SHARE_UNKNOWN + _SHARE_TIE
    )
    other = (true + rng.integers(1, len(FERPLUS_EMOTIONS), n)) % len(FERPLUS_EMOTIONS)
    for i in range(n):
        if not_a_face[i]:
            votes[i, _NOT_A_FACE] = _ANNOTATORS
        elif unknown[i]:
            votes[i, [_UNKNOWN, true[i], other[i]]] = (6, 3, 1)
        elif tie[i]:
            votes[i, [true[i], other[i]]] = 4
            votes[i, rng.choice(len(FERPLUS_EMOTIONS), 2)] += 1
        else:
            p_true = rng.uniform(0.55, 0.95)
            probs = np.full(classes, 0.0)
            probs[: len(FERPLUS_EMOTIONS)] = (1.0 - p_true - 0.02) / (len(FERPLUS_EMOTIONS) - 1)
            probs[true[i]] = p_true
            probs[_UNKNOWN] = 0.02
            votes[i] = rng.multinomial(_ANNOTATORS, probs)
    return votes, ~not_a_face


def write_ferplus_csv(
    path: str | Path, votes: np.ndarray, has_image: np.ndarray, usage: np.ndarray
) -> Path:
    """Write a FER+ label file (fer2013new.csv's layout): Usage, Image name (empty where
    ``has_image`` is False), the 10 vote counts. Atomic: the file appears only once complete."""
    path = Path(path)
    lines = [HEADER]
    for row, (counts, named, code) in enumerate(zip(votes, has_image, usage, strict=True)):
        name = f"fer{row:07d}.png" if named else ""
        lines.append(",".join([USAGE_NAMES[int(code)], name, *map(str, counts.tolist())]))
    return write_atomically(path, ("\n".join(lines) + "\n").encode("ascii"))


def generate_synthetic_ferplus(
    folder: str | Path,
    *,
    train_per_class: int,
    val_per_class: int,
    test_per_class: int,
    seed: int,
) -> tuple[Path, Path]:
    """Write ``folder/fer2013.csv`` (synthetic faces with Usage) and ``folder/fer2013new.csv``
    (FER+ votes drawn around each face's class, :func:`ferplus_votes`), the layout
    ``data=ferplus data.fer2013=<folder>`` reads; returns both paths. Deterministic by seed."""
    faces, labels, usage = make_splits(train_per_class, val_per_class, test_per_class, seed)
    votes, has_image = ferplus_votes(labels, np.random.default_rng([seed, 99]))
    folder = Path(folder)
    pixels = write_face_csv(folder / "fer2013.csv", faces, labels, usage, _marker(labels.size))
    return pixels, write_ferplus_csv(folder / "fer2013new.csv", votes, has_image, usage)
