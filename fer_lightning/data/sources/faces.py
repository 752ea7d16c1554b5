"""FACES alone (171 people of three age groups; no surprise class), split by person into
subject-disjoint folds."""

from __future__ import annotations

from pathlib import Path

from fer_lightning.data.sources.subject_folds import SubjectFolds

GET = (
    "FACES (Max Planck Institute for Human Development, https://faces.mpdl.mpg.de, on request): "
    "SRC is the folder of its JPEGs as downloaded (<id>_<age>_<gender>_<expr>_<set>.jpg); "
    "`python -m fer_lightning.data prepare faces SRC {out}` converts them."
)


class FACES(SubjectFolds):
    """FACES's CSV at ``faces`` (folder or file, relative to ``root``): test on fold ``fold``
    of ``folds`` (171 = leave-one-subject-out), validate on the next, train on the rest."""

    name = "faces"
    title = "FACES"
    get = GET

    def __init__(
        self, root: str | Path = "data", faces: str = "faces", folds: int = 10, fold: int = 0
    ) -> None:
        super().__init__(root, faces, folds, fold)
