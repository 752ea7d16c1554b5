"""Subject-disjoint k-fold splits for the posed datasets (JAFFE: 10 people, FACES: 171).

A random split of a posed dataset puts the same person in training and test and measures how
well the network remembers faces, not emotions. Here every person goes to exactly one fold:

- subjects are grouped into ``folds`` folds deterministically (GroupKFold's rule: subjects in
  decreasing order of their image count, ties by name, each to the fold with the fewest images
  so far, ties to the lowest fold), so the folds hold about the same number of images;
- fold ``fold`` is the test set, the next fold (cyclically) the validation set, the rest train;
- with ``folds`` equal to the number of subjects each fold is one person: leave-one-subject-out.

The subjects come from the ``subject`` column that ``python -m fer_lightning.data prepare
jaffe|faces`` writes; the face reader ignores extra columns, so it is read here, line by line in
step with the reader (blank lines and rows skipped with ``on_bad_row=skip`` left out).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer_lightning.data.csv_reader import FaceTable, excerpt, read_bytes
from fer_lightning.data.errors import DatasetError

SUBJECT_COLUMN = "subject"
# Test, validation and at least one training fold.
MIN_FOLDS = 3


def read_subjects(path: str | Path, table: FaceTable) -> np.ndarray:
    """(N,) str: the ``subject`` of each row of ``table`` (parsed from the CSV ``path``).

    Raises :class:`DatasetError` naming the file when it has no ``subject`` column, and the
    line when a subject is empty."""
    path = Path(path)
    raw = read_bytes(path)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    names = [
        name.strip().strip('"').strip().lower()
        for name in lines[0].decode("utf-8", "replace").rstrip("\r").split(",")
    ]
    if SUBJECT_COLUMN not in names:
        raise DatasetError(
            f"{path}: no 'subject' column, so its faces cannot be split by person (the header "
            f"has {', '.join(excerpt(n, 30) for n in names[:8])}). Convert the images with "
            "`python -m fer_lightning.data prepare jaffe|faces SRC OUT.csv`, which records "
            "the subject of every face."
        )
    column, skipped = names.index(SUBJECT_COLUMN), {line for line, _ in table.skipped}
    subjects = []
    for number, line in enumerate(lines[1:], start=2):
        line = line.rstrip(b"\r")
        if not line or number in skipped:
            continue
        fields = line.split(b",")
        value = fields[column] if column < len(fields) else b""
        subject = value.decode("utf-8", "replace").strip().strip('"').strip()
        if not subject:
            raise DatasetError(
                f"{path}, line {number}: empty subject. Subject-disjoint folds need the person "
                "of every face; convert the images again with `prepare`."
            )
        subjects.append(subject)
    if len(subjects) != len(table):
        raise DatasetError(
            f"{path}: {len(subjects)} subjects for {len(table)} faces; the file changed while "
            "it was read?"
        )
    return np.array(subjects, dtype=str)


def _natural(name: str) -> list[object]:
    """Sort key that orders '2' before '10' (FACES ids are numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def assign_folds(subjects: Sequence[str], folds: int) -> dict[str, int]:
    """Subject -> fold (0..folds-1), balancing the images per fold (see the module docstring).

    Raises ``ValueError`` when ``folds`` is under 3 or above the number of subjects, or when
    there are fewer than 3 subjects, with advice that a valid setting follows."""
    counts = Counter(subjects)
    if len(counts) < MIN_FOLDS:
        people = f"{len(counts)} subject" + ("s" if len(counts) != 1 else "")
        raise ValueError(
            f"only {people} ({', '.join(sorted(counts, key=_natural))}): subject-disjoint folds "
            f"need at least {MIN_FOLDS} people, since test, validation and training each need "
            "their own. Add the images of more people (`python -m fer_lightning.data prepare` "
            "records each face's subject), or use a dataset with more people (JAFFE has 10, "
            "FACES 171)."
        )
    check_fold_count(folds)
    if folds > len(counts):
        raise ValueError(
            f"data.folds={folds}, but there are only {len(counts)} subjects: use data.folds "
            f"from {MIN_FOLDS} to {len(counts)} ({len(counts)} is leave-one-subject-out)."
        )
    load = [0] * folds
    fold_of: dict[str, int] = {}
    for subject in sorted(counts, key=lambda s: (-counts[s], _natural(s))):
        fold = min(range(folds), key=lambda f: (load[f], f))
        fold_of[subject] = fold
        load[fold] += counts[subject]
    return fold_of


def check_fold_count(folds: object) -> None:
    """Raise ``ValueError`` unless ``folds`` is an integer of at least :data:`MIN_FOLDS`."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < MIN_FOLDS:
        raise ValueError(
            f"data.folds={folds!r}: subject-disjoint folds need an integer of at least "
            f"{MIN_FOLDS} (the test, validation and training people each form at least one "
            "fold)."
        )


def fold_rows(subjects: Sequence[str], folds: int, fold: int) -> dict[str, np.ndarray]:
    """Row indices of ``train``, ``val`` and ``test`` for fold ``fold`` of ``folds``: test is
    fold ``fold``, validation fold ``fold + 1`` (mod ``folds``), training the rest."""
    if not 0 <= fold < folds:
        raise ValueError(f"data.fold={fold} is outside 0..{folds - 1} (data.folds={folds}).")
    fold_of = assign_folds(subjects, folds)
    row_fold = np.array([fold_of[s] for s in subjects], dtype=np.int64)
    val_fold = (fold + 1) % folds
    return {
        "train": np.flatnonzero((row_fold != fold) & (row_fold != val_fold)),
        "val": np.flatnonzero(row_fold == val_fold),
        "test": np.flatnonzero(row_fold == fold),
    }
