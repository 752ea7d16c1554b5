"""FER+: FER2013's pixels (Kaggle's single file) with Microsoft's 10-annotator votes from
``fer2013new.csv`` beside it, 8 classes (:mod:`fer_lightning.data.ferplus` states the rules)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fer_lightning.data.errors import DatasetError, DatasetNotFoundError
from fer_lightning.data.ferplus import LABEL_FILE, LABEL_MODES, find_label_file, load_ferplus
from fer_lightning.data.layouts import USAGE_FILES, find_csv_files
from fer_lightning.data.sources.base import DataSource, Split, not_found
from fer_lightning.labels import FERPLUS_EMOTIONS

EXPECTED = (
    "Kaggle's FER2013 file (fer2013.csv or icml_face_data.csv; the pixels) and beside it "
    "Microsoft's FER+ label file fer2013new.csv (the votes; or data.ferplus.file=PATH), both "
    "optionally .gz"
)
GET = (
    "FER2013 comes from Kaggle: 'Challenges in Representation Learning: Facial Expression "
    "Recognition Challenge' (fer2013.csv). fer2013new.csv comes from "
    "https://github.com/microsoft/FERPlus (MIT): put it in the same folder."
)


class FERPlus(DataSource):
    """FER2013's pixels at ``fer2013`` (relative to ``root``) with FER+ targets:
    ``ferplus = {labels: majority|probability|crossentropy, file: null or a path}``."""

    name = "ferplus"
    label_names = FERPLUS_EMOTIONS

    def __init__(
        self,
        root: str | Path = "data",
        fer2013: str = "fer2013",
        ferplus: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(root)
        settings = {"labels": "majority", "file": None, **dict(ferplus or {})}
        unknown = set(settings) - {"labels", "file"}
        if unknown:
            raise ValueError(f"data.ferplus: unknown keys {sorted(unknown)}.")
        if settings["labels"] not in LABEL_MODES:
            raise ValueError(
                f"data.ferplus.labels must be one of {LABEL_MODES}, not {settings['labels']!r}."
            )
        self.mode, self.file = str(settings["labels"]), settings["file"]
        self.fer2013 = fer2013
        self.path = self.resolve(fer2013)
        # Rows per split, kept and dropped by reason (after load).
        self.report: dict[str, dict[str, Any]] = {}

    def _missing(self, looked_at: Path) -> DatasetNotFoundError:
        return not_found(
            "FER+",
            looked_at,
            f"data.root={self.root}, data.fer2013={self.fer2013}, data.ferplus.file={self.file}",
            EXPECTED,
            GET,
        )

    def face_files(self) -> list[Path]:
        """The pixel file; the label file is looked for too, so that a missing one is
        reported before anything else happens."""
        try:
            files = find_csv_files(self.path)
        except DatasetNotFoundError:
            raise self._missing(self.path) from None
        if len(files) != 1:
            raise DatasetError(
                f"{self.path}: FER+ labels follow Kaggle's single FER2013 file row by row, but "
                f"this folder has {', '.join(f.name for f in files)}. Put "
                f"{' or '.join(USAGE_FILES)} there (data.fer2013=...)."
            )
        self.label_file(files[0])
        return files

    def label_file(self, pixel_file: Path) -> Path:
        if self.file:
            configured = self.resolve(self.file)
            if not configured.is_file():
                raise self._missing(configured)
            return configured
        found = find_label_file(pixel_file.parent)
        if found is None:
            raise self._missing(pixel_file.parent / LABEL_FILE)
        return found

    def load(self, cache_dir: Path | None, on_bad_row: str) -> dict[str, Split]:
        (pixel_file,) = self.face_files()
        label_file = self.label_file(pixel_file)
        data = load_ferplus(pixel_file, label_file, self.mode, cache_dir, on_bad_row)
        self.report = data.report()
        faces = data.table.faces
        splits = {}
        for split, targets in data.splits.items():
            if targets.rows.size == 0:
                dropped = ", ".join(f"{r} {n}" for r, n in targets.drop_counts().items())
                raise DatasetError(f"{label_file}: no {split} rows left after dropping {dropped}.")
            # Validation and test targets are always the majority labels, as papers report.
            splits[split] = Split(
                [(faces, targets.rows)],
                targets.labels,
                targets.targets,
                draw=self.mode == "probability",
            )
        return splits
