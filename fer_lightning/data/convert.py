"""Converters from the raw downloads (JAFFE TIFFs, FACES JPEGs, the Kaggle image-folder copy of
FER2013) to FER-format CSVs: ``emotion,pixels[,Usage],subject,crop``.

Each image: read it with the project's safe image reader, find the face (a detector from
:mod:`fer_lightning.faces.detectors`, or a centred square crop with ``detector="none"``), cut it
with :func:`fer_lightning.faces.crop.crop_face` (the crop inference uses too), 48x48 grayscale. The
``crop`` column records how each face was cut out; ``subject`` keeps the person (JAFFE, FACES)
so that splits can be made by person. Unreadable images and unknown names are collected and
reported by name; nothing is skipped silently.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fer_lightning.data.csv_reader import USAGE_TO_SPLIT
from fer_lightning.data.csv_writer import write_face_csv
from fer_lightning.data.errors import DatasetError, DatasetNotFoundError
from fer_lightning.faces.crop import crop_face
from fer_lightning.faces.detectors import Detection
from fer_lightning.faces.images import IMAGE_SUFFIXES, ImageError, read_image
from fer_lightning.labels import EMOTIONS

log = logging.getLogger(__name__)

KINDS = ("jaffe", "faces", "folder")
# JAFFE: KA.AN1.39.tiff -> subject KA, expression AN.
JAFFE_CODES = {"AN": 0, "DI": 1, "FE": 2, "HA": 3, "SA": 4, "SU": 5, "NE": 6}
_JAFFE_NAME = re.compile(r"^([A-Za-z]+)\.([A-Za-z]{2})\d*\.\d+\.tiff?$", re.IGNORECASE)
# FACES: <id>_<age>_<gender>_<expr>_<set>.jpg; FACES has no surprise.
FACES_CODES = {"a": 0, "d": 1, "f": 2, "h": 3, "s": 4, "n": 6}
_FACES_NAME = re.compile(r"^(\d+)_([a-z]+)_([a-z]+)_([a-z]+)_([a-z0-9]+)\.jpe?g$", re.IGNORECASE)
# Image-folder class names (any case) -> FER label, and folder names -> Usage split code.
FOLDER_CLASSES = {
    "angry": 0,
    "anger": 0,
    "disgust": 1,
    "disgusted": 1,
    "fear": 2,
    "fearful": 2,
    "happy": 3,
    "happiness": 3,
    "sad": 4,
    "sadness": 4,
    "surprise": 5,
    "surprised": 5,
    "neutral": 6,
}
FOLDER_SPLITS = {
    "train": 0,
    "training": 0,
    "val": 1,
    "valid": 1,
    "validation": 1,
    "publictest": 1,
    "test": 2,
    "privatetest": 2,
}


@dataclass
class Item:
    """One image to convert: its file, FER label, subject and Usage split code (or None)."""

    path: Path
    label: int
    subject: str
    usage: int | None = None


@dataclass
class ConvertReport:
    """What a conversion did: rows written, crop methods used, and problems by file name."""

    out: Path | None
    rows: int = 0
    crops: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _images(src: Path) -> list[Path]:
    if not src.is_dir():
        raise DatasetNotFoundError(f"{src}: no such folder.")
    # Regular files only: a FIFO or device named *.jpg would block the read forever.
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetNotFoundError(f"{src}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found.")
    return files


def list_jaffe(src: Path, problems: list[str]) -> list[Item]:
    """JAFFE TIFFs (``KA.AN1.39.tiff``) under ``src``; other names go to ``problems``."""
    items = []
    for path in _images(src):
        match = _JAFFE_NAME.match(path.name)
        code = match.group(2).upper() if match else None
        if code not in JAFFE_CODES:
            problems.append(
                f"{path}: not a JAFFE name <subject>.<AN|DI|FE|HA|SA|SU|NE><n>.<n>.tiff"
            )
            continue
        items.append(Item(path, JAFFE_CODES[code], match.group(1).upper()))
    return items


def list_faces(src: Path, problems: list[str]) -> list[Item]:
    """FACES JPEGs (``<id>_<age>_<gender>_<expr>_<set>.jpg``) under ``src``."""
    items = []
    for path in _images(src):
        match = _FACES_NAME.match(path.name)
        code = match.group(4).lower() if match else None
        if code not in FACES_CODES:
            problems.append(f"{path}: not a FACES name <id>_<age>_<gender>_<a|d|f|h|s|n>_<set>.jpg")
            continue
        items.append(Item(path, FACES_CODES[code], match.group(1)))
    return items


def list_folder(src: Path, problems: list[str]) -> list[Item]:
    """The image-folder copy of FER2013: ``<split>/<class>/*.jpg`` (split train/val/test)."""
    items = []
    for path in _images(src):
        rel = path.relative_to(src).parts
        if len(rel) != 3:
            problems.append(f"{path}: expected <split>/<class>/<image> under {src}")
            continue
        split, cls = rel[0].lower(), rel[1].lower()
        if split not in FOLDER_SPLITS or cls not in FOLDER_CLASSES:
            problems.append(
                f"{path}: unknown split {rel[0]!r} or class {rel[1]!r} (splits: train, val, "
                f"test; classes: {', '.join(EMOTIONS)})"
            )
            continue
        # The image folders carry no person ids.
        items.append(Item(path, FOLDER_CLASSES[cls], "", FOLDER_SPLITS[split]))
    return items


LISTERS: dict[str, Callable[[Path, list[str]], list[Item]]] = {
    "jaffe": list_jaffe,
    "faces": list_faces,
    "folder": list_folder,
}


class SquareCropper:
    """Cuts a square face out of an image: around the best detection of ``detector``, or the
    centred square (``detector="none"``, and when no face is found)."""

    def __init__(self, detector: str = "none") -> None:
        self.name = detector
        self._detector = None
        if detector != "none":
            from fer_lightning.faces.detectors import create_detector

            try:
                self._detector = create_detector(detector)
            except Exception as err:  # the detector module's own errors carry the install hint
                raise DatasetError(f"--detector {detector}: {err}") from None
            if detector == "auto":  # record which detector auto chose
                self.name = type(self._detector).__name__.removesuffix("Detector").lower()

    def __call__(self, gray: np.ndarray) -> tuple[np.ndarray, str]:
        """(H, W) uint8 -> (48, 48) uint8 face and the crop method used."""
        h, w = gray.shape
        method = "center"
        if self._detector is not None:
            found = self._detector.detect(gray)
            if found:
                face = crop_face(gray, found[0], align=False)
                return face, f"detector:{self.name}"
            method = "center:no-face"
        side = min(h, w)
        x0, y0 = (w - side) // 2, (h - side) // 2
        return crop_face(gray, Detection((x0, y0, x0 + side, y0 + side), 1.0), margin=0.0), method


def convert(
    kind: str,
    src: str | Path,
    out: str | Path,
    detector: str = "none",
    skip_bad: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> ConvertReport:
    """Convert the images of dataset ``kind`` under ``src`` into the CSV ``out``.

    Raises :class:`DatasetError` listing every unreadable image and unknown name, writing
    nothing, unless ``skip_bad`` (then they are listed in the report and the rest is written).
    """
    if kind not in LISTERS:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}.")
    src, out = Path(src), Path(out)
    problems: list[str] = []
    items = LISTERS[kind](src, problems)
    cropper = SquareCropper(detector)
    faces, kept = [], []
    for item in progress(items) if progress else items:
        try:
            image = cv2.cvtColor(read_image(item.path), cv2.COLOR_BGR2GRAY)
        except ImageError as error:
            problems.append(str(error))
            continue
        face, method = cropper(image)
        faces.append(face)
        kept.append((item, method))
    if problems and not skip_bad:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise DatasetError(
            f"{src}: {len(problems)} problem(s), nothing written (--skip-bad writes the rest):"
            f"\n  {shown}{more}"
        )
    if not kept:
        raise DatasetError(f"{src}: no image could be converted.")
    usage = None
    if kind == "folder":
        usage = np.array([item.usage for item, _ in kept], dtype=np.int8)
        if not (usage == USAGE_TO_SPLIT["publictest"]).any():
            log.warning(
                "%s has no val/ folder: the CSV has no PublicTest rows, so it cannot serve as "
                "data.fer2013 (which validates on PublicTest) without one.",
                src,
            )
    methods = [method for _, method in kept]
    write_face_csv(
        out,
        np.stack(faces),
        np.array([item.label for item, _ in kept], dtype=np.int64),
        usage,
        {"subject": [item.subject for item, _ in kept], "crop": methods},
    )
    crops = {m: methods.count(m) for m in sorted(set(methods))}
    return ConvertReport(out, len(kept), crops, problems)
