"""Writing FER-format CSVs (``emotion,pixels[,Usage][,extra columns]``), atomically."""

from __future__ import annotations

import gzip
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fer_lightning.data.csv_reader import USAGE_NAMES
from fer_lightning.labels import FACE_SIZE

# Decimal text of every byte value, for joining a row of pixels without per-value str() calls.
_PIXEL_TEXT = np.array([str(v) for v in range(256)], dtype=object)


def write_face_csv(
    path: str | Path,
    faces: np.ndarray,
    labels: np.ndarray,
    usage: np.ndarray | None = None,
    extra: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write faces (N, 48, 48) uint8 and labels (N,) 0..6 as a FER-format CSV.

    ``usage``: optional (N,) split codes 0/1/2 written as Training/PublicTest/PrivateTest.
    ``extra``: more columns (name -> N strings without commas), e.g. ``subject`` and ``crop``.
    A ``.gz`` suffix writes gzip. The file appears only once complete.
    """
    path = Path(path)
    faces = np.asarray(faces, dtype=np.uint8).reshape(-1, FACE_SIZE * FACE_SIZE)
    labels = np.asarray(labels)
    if labels.shape != (faces.shape[0],):
        raise ValueError(f"{faces.shape[0]} faces but labels of shape {labels.shape}.")
    extra = dict(extra or {})
    for name, values in extra.items():
        if len(values) != faces.shape[0]:
            raise ValueError(f"column {name!r} has {len(values)} values for {faces.shape[0]} rows.")
        if any("," in str(v) or "\n" in str(v) for v in values):
            raise ValueError(f"column {name!r} has a value with a comma or a line break.")
    header = ["emotion", "pixels", *(["Usage"] if usage is not None else []), *extra]
    lines = [",".join(header)]
    extra_columns = [list(map(str, values)) for values in extra.values()]
    for i in range(faces.shape[0]):
        fields = [str(int(labels[i])), " ".join(_PIXEL_TEXT[faces[i]])]
        if usage is not None:
            fields.append(USAGE_NAMES[int(usage[i])])
        fields.extend(column[i] for column in extra_columns)
        lines.append(",".join(fields))
    data = ("\n".join(lines) + "\n").encode("ascii")
    if path.name.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return write_atomically(path, data)


def write_atomically(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, renamed into
    place once complete. The file gets the permissions of any new file (0666 less the umask,
    usually 0644), not the 0600 of ``tempfile.mkstemp``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}-{secrets.token_hex(6)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
