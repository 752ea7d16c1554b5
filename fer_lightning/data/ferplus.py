"""FER+, Microsoft's 10-annotator re-labelling of FER2013: the vote file, its row-by-row check
against the pixel file, the rows the FER+ authors drop, and the targets of each label mode.

``fer2013new.csv`` (https://github.com/microsoft/FERPlus, MIT) has one row per row of
``fer2013.csv``, in the same order: ``Usage``, ``Image name`` and the vote counts for neutral,
happiness, surprise, sadness, anger, disgust, fear, contempt, unknown and NF (not a face). The
pixels come from ``fer2013.csv`` (or ``icml_face_data.csv``) through the usual reader and cache.

Rows used, as in the FER+ authors' code (``src/generate_training_data.py``, ``src/ferplus.py``):

1. a row with an empty ``Image name`` is dropped (FER+ left those images out);
2. a single vote for a class is an outlier and is discarded (counts of 1 become 0);
3. ``majority`` (and always validation and test): the class with more than half of the
   remaining votes (unknown and NF counted) is the label. A row whose largest count belongs to
   unknown or NF alone is dropped ("unknown or not a face"); a row where no emotion has a strict
   majority (ties, spread votes) is dropped ("no majority");
4. ``crossentropy`` and ``probability`` (training rows only): classes are taken in decreasing vote
   order, tied ones together, until they hold 75% of the votes or 3 are taken, stopping at
   unknown or NF. The row is dropped when unknown or NF alone has the largest count ("unknown or
   not a face"), or when the emotions taken hold at most half of the votes or more than 3 tie
   ("votes too spread"). The counts of the emotions taken, normalised, are the row's label
   distribution.

``crossentropy`` trains on that distribution as a soft target (cross-entropy against it);
``probability`` draws one hard label from it each time the face is drawn, so every epoch (the
paper's "probabilistic label drawing"). These are the FER+ repository's mode names. Accuracy is
always measured against the majority label (validation PublicTest, test PrivateTest).
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer_lightning.data.cache import load_table
from fer_lightning.data.csv_reader import (
    SPLITS,
    USAGE_NAMES,
    CsvColumns,
    FaceTable,
    SizeLimit,
    excerpt,
    parse_usage,
    raise_first,
    read_columns,
    read_head,
)
from fer_lightning.data.errors import DatasetError
from fer_lightning.labels import FERPLUS_EMOTIONS

log = logging.getLogger(__name__)

LABEL_FILE = "fer2013new.csv"
HEADER = (
    "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
)
# Largest label file read: Microsoft's is 1.6 MB; a larger one is refused before it is read.
LABEL_FILE_LIMIT = SizeLimit(64 << 20, "a FER+ label file is far smaller (fer2013new.csv: 1.6 MB)")
_IMAGE_NAME = re.compile(rb"fer([0-9]{7})\.png")
_SHIFT_ADVICE = (
    f"{LABEL_FILE} must have the same rows, in the same order, as the FER2013 file: use "
    "Microsoft's file unchanged (https://github.com/microsoft/FERPlus)."
)
# The vote columns of fer2013new.csv, lower-cased, in the file's (and the classes') order.
VOTE_COLUMNS: tuple[str, ...] = (*FERPLUS_EMOTIONS, "unknown", "nf")
LABEL_MODES: tuple[str, ...] = ("majority", "probability", "crossentropy")
NO_IMAGE, UNKNOWN, NO_MAJORITY, SPREAD = (
    "no image name",
    "unknown or not a face",
    "no majority",
    "votes too spread",
)
DROP_REASONS: tuple[str, ...] = (NO_IMAGE, UNKNOWN, NO_MAJORITY, SPREAD)
_EMOTION_COUNT = len(FERPLUS_EMOTIONS)
_KEPT = -1
# The FER+ authors' thresholds for the distribution modes.
_COVER_SHARE, _MAX_TAKEN, _MIN_SHARE = 0.75, 3, 0.5


@dataclass
class VoteTable:
    """The parsed content of a FER+ label file.

    ``usage``: (N,) int8 split codes (0 train, 1 val, 2 test); ``has_image``: (N,) bool, False
    where ``Image name`` is empty; ``votes``: (N, 10) int64 counts in :data:`VOTE_COLUMNS`
    order; ``lines``: (N,) int64 line number of each row (header = line 1); ``numbers``: (N,)
    int64 number of each row's image name (``fer0000123.png`` -> 123), -1 where it is empty.
    """

    path: str
    usage: np.ndarray
    has_image: np.ndarray
    votes: np.ndarray
    lines: np.ndarray
    numbers: np.ndarray
    # (row, row of the same name in its own place): see check_names.
    repeated: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.usage.shape[0])


@dataclass
class SplitTargets:
    """The kept rows of one split and their targets.

    ``rows``: (K,) int64 row indices (the same in the label file and the pixel table);
    ``labels``: (K,) int64 majority labels (distribution modes: the distribution's largest
    class); ``targets``: (K, 8) float32 label distributions, or None for ``majority``;
    ``dropped``: reason -> row indices of the dropped rows.
    """

    rows: np.ndarray
    labels: np.ndarray
    targets: np.ndarray | None
    dropped: dict[str, np.ndarray] = field(default_factory=dict)

    def drop_counts(self) -> dict[str, int]:
        return {reason: int(rows.size) for reason, rows in self.dropped.items()}


@dataclass
class FerPlusData:
    """The pixel table, the targets of every split and the report of the dropped rows."""

    table: FaceTable
    votes: VoteTable
    mode: str
    splits: dict[str, SplitTargets]

    def report(self) -> dict[str, dict[str, Any]]:
        """Per split: ``rows`` in the file, ``kept``, and ``dropped`` counts per reason."""
        out = {}
        for split, targets in self.splits.items():
            dropped = targets.drop_counts()
            out[split] = {
                "rows": int(targets.rows.size) + sum(dropped.values()),
                "kept": int(targets.rows.size),
                "dropped": dropped,
            }
        return out


# ---------------------------------------------------------------------------- the label file


def find_label_file(folder: Path) -> Path | None:
    """``fer2013new.csv`` (or ``.csv.gz``) in ``folder``, if it is there."""
    for candidate in (folder / LABEL_FILE, folder / f"{LABEL_FILE}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _header_names(line: str) -> list[str]:
    return [name.strip().strip('"').strip().lower() for name in line.rstrip("\r").split(",")]


def is_label_file(path: str | Path) -> bool:
    """Whether ``path`` is a file whose header is that of a FER+ label file (only the start
    of the file is read)."""
    path = Path(path)
    if not path.is_file():
        return False
    head = read_head(path)
    first = head[: head.find(b"\n")] if b"\n" in head else head
    names = _header_names(first.decode("utf-8", "replace").lstrip("\ufeff"))
    return "image name" in names and all(column in names for column in VOTE_COLUMNS)


def _check_vote_header(path: Path, names: list[str]) -> None:
    missing = [name for name in ("usage", "image name", *VOTE_COLUMNS) if name not in names]
    if missing:
        raise DatasetError(
            f"{path}, line 1: not a FER+ label file: no column {', '.join(map(repr, missing))} "
            f"(expected {HEADER}, as in Microsoft's fer2013new.csv)."
        )


def read_votes(path: str | Path) -> VoteTable:
    """Parse and validate a FER+ label file (plain or gzip; BOM and CRLF accepted) with the
    project's CSV reader. A file larger than :data:`LABEL_FILE_LIMIT` is refused before it is
    read.

    Every problem raises :class:`DatasetError` naming the file and line: a missing column, a
    row with the wrong number of fields, an unknown ``Usage``, a vote that is not a
    non-negative integer, an ``Image name`` that is not ``fer<7 digits>.png``, no data rows."""
    table = read_columns(path, f"the header {HEADER}", _check_vote_header, LABEL_FILE_LIMIT)
    good = np.ones(len(table), dtype=bool)
    good[list(table.bad)] = False
    usage = parse_usage(table.raw, table.span("usage"), good, table.bad)
    votes = np.stack([_parse_counts(table, name, good) for name in VOTE_COLUMNS], axis=1).astype(
        np.int64
    )
    numbers = _parse_names(table, good)
    if table.bad:
        raise_first(table.path, sorted((int(table.lines[i]), r) for i, r in table.bad.items()))
    result = VoteTable(str(table.path), usage, numbers >= 0, votes, table.lines, numbers)
    result.repeated = check_names(result)
    return result


def _parse_counts(table: CsvColumns, column: str, good: np.ndarray) -> np.ndarray:
    """(N,) int64 vote counts of ``column``; a value that is not a non-negative integer of at
    most 6 digits marks its row bad."""
    values, counts = np.unique(table.values(column), return_inverse=True)
    parsed = np.zeros(len(values), dtype=np.int64)
    for code, value in enumerate(values.tolist()):
        text = value.decode("utf-8", "replace")
        if re.fullmatch(r"[0-9]{1,6}", text):
            parsed[code] = int(text)
            continue
        for row in np.flatnonzero((counts.reshape(-1) == code) & good):
            table.bad.setdefault(
                int(row), f"the {column} vote count {excerpt(text)} is not a non-negative integer"
            )
    return parsed[counts.reshape(-1)]


def _parse_names(table: CsvColumns, good: np.ndarray) -> np.ndarray:
    """(N,) int64: the number in each row's ``Image name`` (``fer0000123.png`` -> 123), -1
    where the name is empty (an image FER+ left out)."""
    values = table.values("image name")
    numbers = np.full(len(values), -1, dtype=np.int64)
    for row, value in enumerate(values.tolist()):
        if not value:
            continue
        match = _IMAGE_NAME.fullmatch(value)
        if match is None:
            if good[row]:
                table.bad.setdefault(
                    row,
                    f"Image name {excerpt(value)} is not fer<7 digits>.png (FER+ names each "
                    "image by its row in fer2013.csv)",
                )
            continue
        numbers[row] = int(match.group(1))
    return numbers


def _longest_increasing(values: np.ndarray) -> np.ndarray:
    """Indices of a longest strictly increasing subsequence of ``values`` (patience sorting)."""
    tails: list[int] = []  # tails[k]: index of the smallest tail of an increasing run of k+1
    tail_values: list[int] = []
    before = np.full(len(values), -1, dtype=np.int64)
    for i, value in enumerate(values.tolist()):
        k = bisect.bisect_left(tail_values, value)
        before[i] = tails[k - 1] if k else -1
        if k == len(tails):
            tails.append(i)
            tail_values.append(value)
        else:
            tails[k], tail_values[k] = i, value
    chain, i = [], tails[-1] if tails else -1
    while i >= 0:
        chain.append(i)
        i = int(before[i])
    return np.array(chain[::-1], dtype=np.int64)


def check_names(votes: VoteTable) -> list[tuple[int, int]]:
    """Refuse a label file whose ``Image name`` column shows rows missing or repeated.

    FER+ names the image of row ``r`` (counting from 0) ``fer%07d.png`` of a number that is
    never larger than ``r``: the numbering starts at row 0 and falls behind only where a row
    got no number of its own (some rows FER+ left out; in the real file the last row, 35886,
    is ``fer0035801.png``). In row order the names increase, except for rows that name an image
    found in its own place elsewhere. So a row whose name is
    ahead of its row, or that advances by more than the rows do, means a row above it is
    missing, and a name on two adjacent rows means a row repeated: the votes no longer belong
    to the pixels beside them.

    Returns (row, row of the same name in its own place) for each row that names an image
    another row names in its own place. The real fer2013new.csv has four, as the issue that
    asked for this check counted them: Training rows 5274/6968, 5348/11817, 8423/15835 and
    PrivateTest 33200/34334. They are kept, each with its own votes and its own row's pixels,
    as the FER+ authors' ``generate_training_data.py`` pairs the two files by position."""
    named = np.flatnonzero(votes.numbers >= 0)
    if named.size == 0:
        return []
    numbers = votes.numbers[named]
    in_order = named[_longest_increasing(numbers)]
    ordered = np.zeros(len(votes), dtype=bool)
    ordered[in_order] = True
    problems: list[tuple[int, str]] = []  # (row, message); the first row's is raised
    # A name on the next named row too: a row copied (the file was edited or shifted).
    same = np.flatnonzero(numbers[1:] == numbers[:-1])
    if same.size:
        first, second = int(named[same[0]]), int(named[same[0] + 1])
        problems.append(
            (
                second,
                f"{votes.path}, lines {int(votes.lines[first])} and {int(votes.lines[second])}: "
                f"both name {_name(votes.numbers[first])}, a row repeated",
            )
        )
    row_numbers = votes.numbers[in_order]
    ahead = row_numbers > in_order
    gaps = np.diff(row_numbers) > np.diff(in_order)
    bad = np.flatnonzero(ahead | np.concatenate(([False], gaps)))
    if bad.size:
        row = int(in_order[bad[0]])
        problems.append(
            (
                row,
                f"{votes.path}, line {int(votes.lines[row])}: row {row} (counting from 0) is "
                f"named {_name(votes.numbers[row])}, further on than the rows above it allow "
                "(a name never exceeds its row number, nor advances by more than a row per "
                "row), so a row above it is missing",
            )
        )
    if problems:
        raise DatasetError(f"{min(problems)[1]}. {_SHIFT_ADVICE}")
    own_place = {int(votes.numbers[r]): int(r) for r in in_order}
    repeated = []
    for row in np.flatnonzero((votes.numbers >= 0) & ~ordered).tolist():
        twin = own_place.get(int(votes.numbers[row]))
        if twin is None:
            raise DatasetError(
                f"{votes.path}, line {int(votes.lines[row])}: row {row} is named "
                f"{_name(votes.numbers[row])}, out of the order of the rows around it, and no "
                f"other row has that name. {_SHIFT_ADVICE}"
            )
        repeated.append((row, twin))
    return repeated


def _name(number: int) -> str:
    return f"fer{int(number):07d}.png"


def describe_repeated(votes: VoteTable) -> str | None:
    """One line about the rows that name an image named in its own place elsewhere, or None."""
    if not votes.repeated:
        return None
    pairs = ", ".join(
        f"{USAGE_NAMES[votes.usage[row]]} row {row} (line {int(votes.lines[row])}) names "
        f"{_name(votes.numbers[row])} like row {twin}"
        for row, twin in votes.repeated
    )
    return (
        f"{len(votes.repeated)} rows name an image that another row names in its own place: "
        f"{pairs}. Kept, each with its own votes and its own row's pixels (the FER+ authors' "
        "code pairs the two files by position too)."
    )


def check_alignment(votes: VoteTable, table: FaceTable) -> None:
    """Refuse a label file that does not match the pixel file row by row: the same number of
    rows and the same ``Usage`` on every row. The message names the label file's first line
    that disagrees (a shifted, shortened or foreign file)."""
    if table.usage is None:
        raise DatasetError(
            f"{table.path}: no Usage column. FER+ labels follow Kaggle's fer2013.csv (or "
            "icml_face_data.csv) row by row; point data.fer2013 at one of those."
        )
    if table.skipped:
        raise DatasetError(
            f"{table.path}: {len(table.skipped)} bad rows were skipped (on_bad_row=skip, first "
            f"line {table.skipped[0][0]}), so its rows no longer line up with the FER+ labels "
            f"in {votes.path}. Repair the file or use data.on_bad_row=error to see the problem."
        )
    n_votes, n_pixels = len(votes), len(table)
    common = min(n_votes, n_pixels)
    differ = np.flatnonzero(votes.usage[:common] != table.usage[:common])
    if differ.size == 0 and n_votes == n_pixels:
        return
    if differ.size:
        row = int(differ[0])
        where = (
            f"{votes.path}, line {int(votes.lines[row])}: Usage {USAGE_NAMES[votes.usage[row]]} "
            f"but row {row + 1} of {table.path} is {USAGE_NAMES[table.usage[row]]}"
        )
    elif n_votes < n_pixels:
        where = (
            f"{votes.path}: ends after line {int(votes.lines[-1])} (row {n_votes}); the "
            f"first row without labels is row {n_votes + 1} of {table.path}"
        )
    else:
        where = (
            f"{votes.path}, line {int(votes.lines[n_pixels])}: row {n_pixels + 1}, but "
            f"{table.path} ends at row {n_pixels}"
        )
    counts = f" ({n_votes} label rows, {n_pixels} image rows)" if n_votes != n_pixels else ""
    raise DatasetError(
        f"{where}{counts}. {LABEL_FILE} must have the same rows, in the same order, as the "
        "FER2013 file: is one of them shifted, cut short or from another copy?"
    )


# ---------------------------------------------------------------------------- targets


def _without_single_votes(votes: np.ndarray) -> np.ndarray:
    """The authors' outlier removal: a class with a single vote gets none."""
    return np.where(votes <= 1, 0, votes)


def _unknown_on_top(clean: np.ndarray) -> np.ndarray:
    """(N,) bool: the largest count belongs to unknown or NF and to no emotion."""
    top = clean.max(axis=1)
    return (clean[:, _EMOTION_COUNT:].max(axis=1) == top) & (
        clean[:, :_EMOTION_COUNT].max(axis=1) < top
    )


def majority_labels(votes: np.ndarray, has_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Majority labels of (N, 10) vote counts: ((N,) int64 label or -1, (N,) int8 reason:
    -1 kept, else an index into :data:`DROP_REASONS`)."""
    clean = _without_single_votes(votes)
    top, total = clean.max(axis=1), clean.sum(axis=1)
    reason = np.full(len(clean), _KEPT, dtype=np.int8)
    reason[2 * top <= total] = DROP_REASONS.index(NO_MAJORITY)
    reason[_unknown_on_top(clean)] = DROP_REASONS.index(UNKNOWN)
    reason[~has_image] = DROP_REASONS.index(NO_IMAGE)
    labels = np.where(reason == _KEPT, clean.argmax(axis=1), -1).astype(np.int64)
    return labels, reason


def _taken_emotions(clean: Sequence[int]) -> list[float] | None:
    """The FER+ authors' rule for the distribution modes on one row of cleaned counts: the
    counts of the classes taken, or None when the row is dropped."""
    remaining = [float(v) for v in clean]
    total = sum(remaining)
    taken = [0.0] * len(remaining)
    covered, count = 0.0, 0
    open_ = True
    while covered < _COVER_SHARE * total and count < _MAX_TAKEN and open_:
        largest = max(remaining)
        for i, value in enumerate(remaining):
            if value != largest:
                continue
            taken[i], remaining[i] = largest, 0.0
            covered += largest
            count += 1
            if i >= _EMOTION_COUNT:  # unknown or NF: stop; keep it only if it came first
                open_ = False
                if sum(taken) > largest:
                    taken[i] = 0.0
                    count -= 1
                break
    if sum(taken) <= _MIN_SHARE * total or count > _MAX_TAKEN:
        return None
    if int(np.argmax(taken)) >= _EMOTION_COUNT:
        return None
    return taken[:_EMOTION_COUNT]


def label_distributions(votes: np.ndarray, has_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label distributions of (N, 10) vote counts for the distribution modes: ((N, 8) float32,
    zero rows where dropped; (N,) int8 reason, -1 kept)."""
    clean = _without_single_votes(votes)
    unique, inverse = np.unique(clean, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    unique_targets = np.zeros((len(unique), _EMOTION_COUNT), dtype=np.float64)
    unique_kept = np.zeros(len(unique), dtype=bool)
    for i, row in enumerate(unique.tolist()):  # a few thousand distinct rows in FER+
        taken = _taken_emotions(row)
        if taken is not None:
            unique_targets[i] = np.asarray(taken) / sum(taken)
            unique_kept[i] = True
    targets = unique_targets[inverse].astype(np.float32)
    kept = unique_kept[inverse]
    reason = np.full(len(clean), _KEPT, dtype=np.int8)
    reason[~kept] = DROP_REASONS.index(SPREAD)
    reason[~kept & _unknown_on_top(clean)] = DROP_REASONS.index(UNKNOWN)
    reason[~has_image] = DROP_REASONS.index(NO_IMAGE)
    targets[reason != _KEPT] = 0.0
    return targets, reason


def split_targets(votes: VoteTable, split: str, mode: str) -> SplitTargets:
    """Kept rows and targets of ``split``: validation and test always by majority."""
    in_split = np.flatnonzero(votes.usage == SPLITS.index(split))
    counts, has_image = votes.votes[in_split], votes.has_image[in_split]
    targets = None
    if split == "train" and mode != "majority":
        distributions, reason = label_distributions(counts, has_image)
        keep = reason == _KEPT
        targets = distributions[keep]
        labels = targets.argmax(axis=1).astype(np.int64)
    else:
        majority, reason = majority_labels(counts, has_image)
        keep = reason == _KEPT
        labels = majority[keep]
    dropped = {
        DROP_REASONS[code]: in_split[reason == code]
        for code in range(len(DROP_REASONS))
        if np.any(reason == code)
    }
    return SplitTargets(in_split[keep], labels, targets, dropped)


def load_ferplus(
    pixel_file: str | Path,
    label_file: str | Path,
    mode: str = "majority",
    cache_dir: str | Path | None = None,
    on_bad_row: str = "error",
) -> FerPlusData:
    """The FER2013 pixels with FER+ targets: reads both files, checks that they agree row by
    row, drops rows by the rules above and logs the counts per split and reason. ``mode`` is
    one of :data:`LABEL_MODES` (the FER+ source checks the setting)."""
    votes = read_votes(label_file)
    table = load_table(pixel_file, cache_dir, on_bad_row)
    check_alignment(votes, table)
    data = FerPlusData(
        table, votes, mode, {split: split_targets(votes, split, mode) for split in SPLITS}
    )
    for split, entry in data.report().items():
        dropped = ", ".join(f"{reason} {n}" for reason, n in entry["dropped"].items()) or "none"
        log.info(
            "FER+ %s (%s labels): %d rows, %d kept; dropped: %s",
            split,
            mode if split == "train" else "majority",
            entry["rows"],
            entry["kept"],
            dropped,
        )
    repeated = describe_repeated(votes)
    if repeated:
        log.info("FER+ %s: %s", votes.path, repeated)
    return data
