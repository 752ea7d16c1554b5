"""Predictions as a table: one row per face, the same columns in predictions.csv and in the
pandas DataFrames of :meth:`EmotionRecognizer.predict_frame_table` and
:meth:`EmotionRecognizer.predict_video`.

Columns: ``source`` (the input: a path or a name), ``output`` (the annotated file written for
it, empty when none), ``frame`` (video frame index from 0; empty for images), ``time_s`` (the
frame's time in the video, seconds; empty for images), ``face`` (index within the image or
frame), ``x0, y0, x1, y1`` (box in the input's pixels), ``score`` (the detector's), ``label``
(the most likely emotion), then one column per emotion with its probability. Values are
rounded as predictions.jsonl rounds them, so the file and the DataFrame hold the same numbers.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from typing import IO, Any

import pandas as pd

from fer_lightning.inference.predictions import FacePrediction

BASE_COLUMNS = (
    "source",
    "output",
    "frame",
    "time_s",
    "face",
    "x0",
    "y0",
    "x1",
    "y1",
    "score",
    "label",
)
# Digits kept: as FacePrediction.to_dict (predictions.jsonl) keeps them.
SCORE_DIGITS, PROB_DIGITS, TIME_DIGITS = 4, 6, 3


def columns(labels: Sequence[str]) -> list[str]:
    """The table's columns for a model with class names ``labels``."""
    return [*BASE_COLUMNS, *labels]


def face_rows(
    faces: Sequence[FacePrediction],
    source: str,
    output: str | None = None,
    frame: int | None = None,
    time_s: float | None = None,
) -> list[dict[str, Any]]:
    """One row per face of one image or video frame."""
    rows = []
    for j, face in enumerate(faces):
        x0, y0, x1, y1 = (int(v) for v in face.box)
        row: dict[str, Any] = {
            "source": source,
            "output": output or "",
            "frame": frame,
            "time_s": None if time_s is None else round(float(time_s), TIME_DIGITS),
            "face": j,
            "x0": x0,
            "y0": y0,
            "x1": x1,
            "y1": y1,
            "score": round(float(face.score), SCORE_DIGITS),
            "label": face.label,
        }
        row.update({name: round(float(p), PROB_DIGITS) for name, p in face.probs.items()})
        rows.append(row)
    return rows


def frame_table(rows: Iterable[dict[str, Any]], labels: Sequence[str]) -> pd.DataFrame:
    """The rows as a DataFrame with the table's columns: ``frame`` and ``face`` as nullable
    integers, ``time_s``, the box, ``score`` and the probabilities as numbers."""
    table = pd.DataFrame(list(rows), columns=columns(labels))
    for name in ("frame", "face", "x0", "y0", "x1", "y1"):
        table[name] = pd.array(table[name], dtype="Int64")
    for name in ("time_s", "score", *labels):
        table[name] = pd.to_numeric(table[name]).astype("float64")
    for name in ("source", "output", "label"):
        table[name] = table[name].astype("string")
    return table


def read_table(path: Any, labels: Sequence[str]) -> pd.DataFrame:
    """predictions.csv read back as :func:`frame_table` types it."""
    raw = pd.read_csv(
        path, dtype={"source": str, "output": str, "label": str}, keep_default_na=False
    )
    raw = raw.replace("", None)
    raw["output"] = raw["output"].fillna("")
    return frame_table(raw.to_dict("records"), labels)


class CsvTableWriter:
    """Writes rows to an open text file as CSV, the header first; empty cells for None."""

    def __init__(self, stream: IO[str], labels: Sequence[str]) -> None:
        self._writer = csv.DictWriter(stream, fieldnames=columns(labels), lineterminator="\n")
        self._writer.writeheader()

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._writer.writerow({k: "" if v is None else v for k, v in row.items()})


def emotion_shares(table: pd.DataFrame, labels: Sequence[str]) -> dict[str, float]:
    """The share of faces (rows) given each label, in ``labels`` order (0 for none)."""
    if table.empty:
        return dict.fromkeys(labels, 0.0)
    counts = table["label"].value_counts()
    return {name: float(counts.get(name, 0)) / len(table) for name in labels}


def shares_line(shares: dict[str, float]) -> str:
    """``happy 56%, neutral 33%, sad 11%`` (largest first, zero shares left out)."""
    ranked = sorted(((v, k) for k, v in shares.items() if v > 0), reverse=True)
    return ", ".join(f"{name} {100 * value:.0f}%" for value, name in ranked) or "no faces"
