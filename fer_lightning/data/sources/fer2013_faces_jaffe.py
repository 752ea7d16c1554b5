"""The original code's setup: train = FER2013 Training + all of FACES + all of JAFFE; val =
FER2013 PublicTest; test = FER2013 PrivateTest (FACES and JAFFE only add training faces)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_lightning.data.errors import DatasetNotFoundError
from fer_lightning.data.layouts import find_csv_files, load_splits
from fer_lightning.data.sources import faces as faces_source
from fer_lightning.data.sources import jaffe as jaffe_source
from fer_lightning.data.sources.base import Split, not_found
from fer_lightning.data.sources.fer2013 import FER2013, split_of

# The extra training sets: name -> (title, how to get it).
EXTRAS = {
    "faces": ("FACES", faces_source.GET),
    "jaffe": ("JAFFE", jaffe_source.GET),
}


class FER2013FacesJaffe(FER2013):
    """FER2013 at ``fer2013``; FACES and JAFFE CSVs (made by ``prepare``) at ``faces`` and
    ``jaffe``; all relative to ``root``."""

    name = "fer2013_faces_jaffe"

    def __init__(
        self,
        root: str | Path = "data",
        fer2013: str = "fer2013",
        faces: str = "faces",
        jaffe: str = "jaffe",
    ) -> None:
        super().__init__(root, fer2013)
        self.extras = {"faces": faces, "jaffe": jaffe}

    def face_files(self) -> list[Path]:
        files = super().face_files()
        for name, location in self.extras.items():
            files += self._extra_files(name, location)
        return files

    def _extra_files(self, name: str, location: str) -> list[Path]:
        path = self.resolve(location)
        title, get = EXTRAS[name]
        try:
            return find_csv_files(path)
        except DatasetNotFoundError:
            raise not_found(
                title,
                path,
                f"data.root={self.root}, data.{name}={location}",
                f"{path / f'{name}.csv'} (or a single CSV in that folder, or data.{name} "
                f"naming the file), made by `python -m fer_lightning.data prepare {name} SRC "
                f"{path / f'{name}.csv'}`",
                get.format(out=path / f"{name}.csv"),
            ) from None

    def load(self, cache_dir: Path | None, on_bad_row: str) -> dict[str, Split]:
        main = super().load(cache_dir, on_bad_row)
        train = [main["train"]]
        for name, location in self.extras.items():
            self._extra_files(name, location)
            extra = load_splits(self.resolve(location), cache_dir, on_bad_row)
            train.append(split_of(list(extra.values())))  # every row trains
        return {
            "train": Split(
                [part for split in train for part in split.parts],
                np.concatenate([split.labels for split in train]),
            ),
            "val": main["val"],
            "test": main["test"],
        }
