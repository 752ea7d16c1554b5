"""Dataset layouts on disk -> named splits of faces.

Accepted, for a path that is a file or a folder:

- a CSV with a ``Usage`` column (Kaggle ``fer2013.csv``, ``icml_face_data.csv``, the synthetic
  set): ``Training`` -> train, ``PublicTest`` -> val, ``PrivateTest`` -> test;
- a folder holding one of those files, or ``train.csv``, ``val.csv``, ``test.csv`` (the RMN
  layout; a missing one is simply absent);
- a single-split CSV without ``Usage`` (FACES, JAFFE): all rows in one split, ``train``;
- a folder holding exactly one such CSV.

Any of the files may be gzip-compressed (``.csv.gz``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_lightning.data.cache import load_table
from fer_lightning.data.csv_reader import SPLITS, FaceTable
from fer_lightning.data.errors import DatasetError, DatasetNotFoundError

USAGE_FILES: tuple[str, ...] = ("fer2013.csv", "icml_face_data.csv")
SPLIT_FILES: dict[str, str] = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
# What a dataset path may be, for the message when there is nothing there.
LOOKED_FOR = (
    "Expected a face CSV (emotion,pixels[,Usage]; .csv or .csv.gz) or a folder holding "
    "fer2013.csv or icml_face_data.csv (Kaggle's FER2013), train.csv/val.csv/test.csv, or a "
    "single CSV made by `python -m fer_lightning.data prepare`; a FER+ label file "
    "(fer2013new.csv) is checked against the fer2013.csv beside it."
)


@dataclass
class SplitRef:
    """One split: rows ``rows`` (int64 indices, or None for all) of a parsed table."""

    table: FaceTable
    rows: np.ndarray | None = None

    @property
    def faces(self) -> np.ndarray:
        """(N, 48, 48) uint8 (a copy when ``rows`` selects a subset)."""
        return self.table.faces if self.rows is None else self.table.faces[self.rows]

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64."""
        return self.table.labels if self.rows is None else self.table.labels[self.rows]

    def __len__(self) -> int:
        return len(self.table) if self.rows is None else int(self.rows.size)


def _with_gz(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_csv_files(path: Path) -> list[Path]:
    """The CSV files that make up the dataset at ``path`` (a file, or a folder in one of the
    accepted layouts). Raises :class:`DatasetNotFoundError` naming what was looked for."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file or folder. {LOOKED_FOR}")
    for name in USAGE_FILES:
        found = _with_gz(path, name)
        if found is not None:
            return [found]
    split_files = [f for f in (_with_gz(path, n) for n in SPLIT_FILES.values()) if f is not None]
    if split_files:
        return split_files
    csvs = sorted([*path.glob("*.csv"), *path.glob("*.csv.gz")])
    if len(csvs) == 1:
        return csvs
    looked = ", ".join([*USAGE_FILES, *SPLIT_FILES.values()])
    found = f"; it holds {len(csvs)} other CSVs" if csvs else ""
    raise DatasetNotFoundError(
        f"{path}: no dataset found: looked for {looked} (optionally .gz), or a single CSV{found}."
    )


def load_splits(
    path: str | Path, cache_dir: str | Path | None = None, on_bad_row: str = "error"
) -> dict[str, SplitRef]:
    """The splits (``train``/``val``/``test``, those present) of the dataset at ``path``."""
    path = Path(path)
    splits: dict[str, SplitRef] = {}
    for file in find_csv_files(path):
        table = load_table(file, cache_dir, on_bad_row)
        if table.usage is not None:
            for code, split in enumerate(SPLITS):
                rows = np.flatnonzero(table.usage == code)
                if rows.size:
                    _add(splits, split, SplitRef(table, rows), file)
            continue
        split = _split_of_file(file)
        _add(splits, split, SplitRef(table), file)
    return splits


def _split_of_file(file: Path) -> str:
    stem = file.name.split(".")[0].lower()
    for split, name in SPLIT_FILES.items():
        if stem == name.split(".")[0]:
            return split
    return "train"


def _add(splits: dict[str, SplitRef], split: str, ref: SplitRef, file: Path) -> None:
    if split in splits:
        raise DatasetError(f"{file}: a second source for the {split} split.")
    splits[split] = ref
