"""Predictions as a table: one row per face, the same columns in predictions.csv and in the
pandas DataFrames of :meth:`EmotionRecognizer.predict_frame_table` and
:meth:`EmotionRecognizer.predict_video`.

Columns: ``source`` (the input: a path or a name), ``output`` (the annotated file written for
it, empty when none), ``frame`` (video frame index from 0; empty for images), ``time_s`` (the
frame's time in the video, seconds; empty for images), ``face`` (index within the image or
frame), ``x0, y0, x1, y1`` (box in the input's pixels), ``score`` (the detector's), ``label``
(the most likely emotion), then one column per emotion with its probability; then, for tracked
videos (empty otherwise), ``track_id`` (the person, from 1), ``smoothed_label`` and one
``smoothed_<emotion>`` column per emotion (the track's smoothed probabilities). Values are
rounded as predictions.jsonl rounds them, so the file and the DataFrame hold the same numbers.

:func:`tracks_table` makes tracks.csv from it: one row per person (source, track_id): first and
last frame and time seen, duration, analysed frames, dominant emotion and the share of each
(``share_<emotion>``, over the person's analysed frames, from the smoothed labels).
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
TRACK_COLUMNS = ("track_id", "smoothed_label")
TRACKS_BASE_COLUMNS = (
    "source",
    "track_id",
    "first_frame",
    "last_frame",
    "first_s",
    "last_s",
    "duration_s",
    "frames",
    "dominant",
)
# Digits kept: as FacePrediction.to_dict (predictions.jsonl) keeps them.
SCORE_DIGITS, PROB_DIGITS, TIME_DIGITS = 4, 6, 3


def columns(labels: Sequence[str]) -> list[str]:
    """The table's columns for a model with class names ``labels``."""
    return [*BASE_COLUMNS, *labels, *TRACK_COLUMNS, *smoothed_columns(labels)]


def smoothed_columns(labels: Sequence[str]) -> list[str]:
    """``smoothed_<label>`` for each label."""
    return [f"smoothed_{name}" for name in labels]


def share_columns(labels: Sequence[str]) -> list[str]:
    """``share_<label>`` for each label (tracks.csv)."""
    return [f"share_{name}" for name in labels]


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
        track_id = getattr(face, "track_id", None)
        smoothed = getattr(face, "smoothed_probs", None)
        row["track_id"] = None if track_id is None else int(track_id)
        row["smoothed_label"] = None if smoothed is None else face.smoothed_label
        for name in face.probs:
            value = None if smoothed is None else round(float(smoothed[name]), PROB_DIGITS)
            row[f"smoothed_{name}"] = value
        rows.append(row)
    return rows


def frame_table(rows: Iterable[dict[str, Any]], labels: Sequence[str]) -> pd.DataFrame:
    """The rows as a DataFrame with the table's columns: ``frame`` and ``face`` as nullable
    integers, ``time_s``, the box, ``score`` and the probabilities as numbers."""
    table = pd.DataFrame(list(rows), columns=columns(labels))
    for name in ("frame", "face", "x0", "y0", "x1", "y1", "track_id"):
        table[name] = pd.array(table[name], dtype="Int64")
    for name in ("time_s", "score", *labels, *smoothed_columns(labels)):
        table[name] = pd.to_numeric(table[name]).astype("float64")
    for name in ("source", "output", "label", "smoothed_label"):
        table[name] = table[name].astype("string")
    return table


def read_table(path: Any, labels: Sequence[str]) -> pd.DataFrame:
    """predictions.csv read back as :func:`frame_table` types it."""
    text = {"source": str, "output": str, "label": str, "smoothed_label": str}
    raw = pd.read_csv(path, dtype=text, keep_default_na=False)
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


def tracks_table(table: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """One row per person (``source``, ``track_id``) of a predictions table's tracked rows,
    in order of first appearance: ``first_frame``, ``last_frame``, ``first_s``, ``last_s``,
    ``duration_s`` (last minus first time), ``frames`` (analysed frames with the face),
    ``dominant`` (the most frequent smoothed label) and ``share_<label>`` (the share of those
    frames with each smoothed label). Untracked rows are left out."""
    tracked = table[table["track_id"].notna()]
    rows = []
    for (source, track_id), group in tracked.groupby(["source", "track_id"], sort=False):
        counts = group["smoothed_label"].value_counts()
        shares = {name: float(counts.get(name, 0)) / len(group) for name in labels}
        first_s, last_s = group["time_s"].min(), group["time_s"].max()
        row: dict[str, Any] = {
            "source": source,
            "track_id": int(track_id),
            "first_frame": int(group["frame"].min()),
            "last_frame": int(group["frame"].max()),
            "first_s": first_s,
            "last_s": last_s,
            "duration_s": None if pd.isna(first_s) else round(last_s - first_s, TIME_DIGITS),
            "frames": int(group["frame"].nunique()),
            "dominant": max(labels, key=lambda name: (shares[name], -labels.index(name))),
        }
        row.update({f"share_{name}": round(shares[name], 4) for name in labels})
        rows.append(row)
    result = pd.DataFrame(rows, columns=[*TRACKS_BASE_COLUMNS, *share_columns(labels)])
    for name in ("track_id", "first_frame", "last_frame", "frames"):
        result[name] = pd.array(result[name], dtype="Int64")
    for name in ("first_s", "last_s", "duration_s", *share_columns(labels)):
        result[name] = pd.to_numeric(result[name]).astype("float64")
    for name in ("source", "dominant"):
        result[name] = result[name].astype("string")
    return result
