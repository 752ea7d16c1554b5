"""The posed datasets of few people (JAFFE, FACES), split into subject-disjoint folds of the
single CSV that ``python -m fer_lightning.data prepare`` makes (:mod:`fer_lightning.data.folds`
states the rule): fold ``fold`` is the test set, the next fold validation, the rest training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from fer_lightning.data.cache import load_table
from fer_lightning.data.errors import DatasetError, DatasetNotFoundError
from fer_lightning.data.folds import check_fold_count, fold_rows, read_subjects
from fer_lightning.data.layouts import SplitRef, find_csv_files
from fer_lightning.data.sources.base import DataSource, Split, not_found
from fer_lightning.data.sources.fer2013 import split_of

log = logging.getLogger(__name__)


class SubjectFolds(DataSource):
    """A single CSV with a ``subject`` column at ``location`` (relative to ``root``), split
    into ``folds`` folds of people. Subclasses name the dataset and say how to get it."""

    # The dataset's name in messages, how to get its images, and the file prepare writes.
    title: ClassVar[str]
    get: ClassVar[str]

    def __init__(self, root: str | Path, location: str, folds: int = 10, fold: int = 0) -> None:
        super().__init__(root)
        check_fold_count(folds)
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
            raise ValueError(f"data.fold={fold} is outside 0..{folds - 1} (data.folds={folds}).")
        self.location, self.folds, self.fold = location, folds, fold
        self.path = self.resolve(location)
        self.fold_subjects: dict[str, list[str]] = {}

    def face_files(self) -> list[Path]:
        try:
            files = find_csv_files(self.path)
        except DatasetNotFoundError:
            raise not_found(
                self.title,
                self.path,
                f"data.root={self.root}, data.{self.name}={self.location}",
                f"{self.path / f'{self.name}.csv'} (or a single CSV in that folder, or "
                f"data.{self.name} naming the file), made by `python -m fer_lightning.data "
                f"prepare {self.name} SRC {self.path / f'{self.name}.csv'}`",
                self.get.format(out=self.path / f"{self.name}.csv"),
            ) from None
        if len(files) != 1:
            raise DatasetError(
                f"{self.path}: expected the single CSV made by `python -m fer_lightning.data "
                f"prepare {self.name}`, found {', '.join(f.name for f in files)}."
            )
        return files

    def load(self, cache_dir: Path | None, on_bad_row: str) -> dict[str, Split]:
        (file,) = self.face_files()
        table = load_table(file, cache_dir, on_bad_row)
        subjects = read_subjects(file, table)
        try:
            rows = fold_rows(subjects, self.folds, self.fold)
        except ValueError as err:
            raise DatasetError(f"{file}: {err}") from None
        self.fold_subjects = {
            split: sorted(set(subjects[split_rows].tolist())) for split, split_rows in rows.items()
        }
        log.info(
            "%s fold %d of %d: test subjects %s, validation subjects %s, %d training subjects",
            self.name,
            self.fold,
            self.folds,
            ", ".join(self.fold_subjects["test"]),
            ", ".join(self.fold_subjects["val"]),
            len(self.fold_subjects["train"]),
        )
        return {split: split_of([SplitRef(table, r)]) for split, r in rows.items()}
