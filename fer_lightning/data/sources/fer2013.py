"""FER2013 alone: train = Training (28,709), val = PublicTest (3,589), test = PrivateTest
(3,589), from Kaggle's file (or the RMN layout of train.csv, val.csv and test.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_lightning.data.errors import DatasetError, DatasetNotFoundError
from fer_lightning.data.layouts import SplitRef, find_csv_files, load_splits
from fer_lightning.data.sources.base import DataSource, Split, not_found

EXPECTED = (
    "Kaggle's fer2013.csv or icml_face_data.csv, or train.csv, val.csv and test.csv (any may "
    "be .csv.gz), in that folder; or data.fer2013 naming the file"
)
GET = (
    "FER2013 comes from Kaggle: 'Challenges in Representation Learning: Facial Expression "
    "Recognition Challenge' (https://www.kaggle.com/c/challenges-in-representation-learning-"
    "facial-expression-recognition-challenge/data, fer2013.csv or icml_face_data.csv)."
)


class FER2013(DataSource):
    """FER2013 at ``fer2013`` (a folder or a file; relative to ``root``)."""

    name = "fer2013"

    def __init__(self, root: str | Path = "data", fer2013: str = "fer2013") -> None:
        super().__init__(root)
        self.fer2013 = fer2013
        self.path = self.resolve(fer2013)

    def face_files(self) -> list[Path]:
        try:
            return find_csv_files(self.path)
        except DatasetNotFoundError:
            raise not_found(
                "FER2013",
                self.path,
                f"data.root={self.root}, data.fer2013={self.fer2013}",
                EXPECTED,
                GET,
            ) from None

    def load(self, cache_dir: Path | None, on_bad_row: str) -> dict[str, Split]:
        self.face_files()
        splits = load_splits(self.path, cache_dir, on_bad_row)
        for split in ("train", "val", "test"):
            if split not in splits:
                raise DatasetError(
                    f"{self.path}: no {split} split (need Usage values Training, PublicTest "
                    "and PrivateTest, or train.csv, val.csv and test.csv)."
                )
        return {split: split_of([splits[split]]) for split in ("train", "val", "test")}


def split_of(refs: list[SplitRef]) -> Split:
    """A split of the rows ``refs`` select from their tables."""
    return Split(
        [(ref.table.faces, ref.rows) for ref in refs],
        np.concatenate([ref.labels for ref in refs]),
    )
