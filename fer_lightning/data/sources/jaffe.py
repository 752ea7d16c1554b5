"""JAFFE alone (10 women, 213 images), split by person into subject-disjoint folds."""

from __future__ import annotations

from pathlib import Path

from fer_lightning.data.sources.subject_folds import SubjectFolds

GET = (
    "JAFFE (Lyons et al., https://zenodo.org/record/3451524, on request): SRC is the folder of "
    "the archive's TIFF images as unpacked (KA.AN1.39.tiff ...); "
    "`python -m fer_lightning.data prepare jaffe SRC {out}` converts them."
)


class JAFFE(SubjectFolds):
    """JAFFE's CSV at ``jaffe`` (folder or file, relative to ``root``): test on fold ``fold``
    of ``folds`` (10 = one person per fold), validate on the next, train on the rest."""

    name = "jaffe"
    title = "JAFFE"
    get = GET

    def __init__(
        self, root: str | Path = "data", jaffe: str = "jaffe", folds: int = 10, fold: int = 0
    ) -> None:
        super().__init__(root, jaffe, folds, fold)
