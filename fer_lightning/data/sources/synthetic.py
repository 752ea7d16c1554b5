"""The procedurally drawn 48x48 faces (:mod:`fer_lightning.data.synthetic`): generated on first
use under ``data.root``, no download."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fer_lightning.data.sources.fer2013 import FER2013
from fer_lightning.data.synthetic import generate_synthetic_csv, synthetic_csv_path

SIZE_KEYS = ("train_per_class", "val_per_class", "test_per_class", "seed")


class SyntheticFaces(FER2013):
    """The synthetic set of ``synthetic`` = ``{train_per_class, val_per_class,
    test_per_class, seed}`` (``conf/data/synthetic.yaml`` has the defaults) and optionally
    ``dir`` (default ``<root>/synthetic``), read like FER2013's Kaggle file."""

    name = "synthetic"

    def __init__(
        self, root: str | Path = "data", synthetic: Mapping[str, Any] | None = None
    ) -> None:
        settings = dict(synthetic or {})
        unknown = set(settings) - {*SIZE_KEYS, "dir"}
        if unknown:
            raise ValueError(f"data.synthetic: unknown keys {sorted(unknown)}.")
        missing = [key for key in SIZE_KEYS if key not in settings]
        if missing:
            raise ValueError(
                f"data.synthetic needs {', '.join(missing)} (see conf/data/synthetic.yaml)."
            )
        self.sizes = {key: int(settings[key]) for key in SIZE_KEYS}
        folder = settings.get("dir") or Path(root).expanduser() / "synthetic"
        self.folder = Path(folder)
        super().__init__(root, str(synthetic_csv_path(self.folder, **self.sizes)))

    def face_files(self) -> list[Path]:
        return [generate_synthetic_csv(self.folder, **self.sizes)]

    @property
    def synthetic(self) -> bool:
        return True
