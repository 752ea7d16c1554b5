"""``check``: validate dataset files or folders and summarise them per split.

A FER+ label file (``fer2013new.csv``), given itself or found in a dataset folder, is checked
row by row against the FER2013 CSV beside it and summarised by its votes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TextIO

import numpy as np

from fer_lightning.data.csv_reader import SPLITS, FaceTable, read_face_csv
from fer_lightning.data.ferplus import (
    DROP_REASONS,
    NO_IMAGE,
    NO_MAJORITY,
    SPREAD,
    UNKNOWN,
    VoteTable,
    check_alignment,
    describe_repeated,
    find_label_file,
    is_label_file,
    label_distributions,
    majority_labels,
    read_votes,
)
from fer_lightning.data.layouts import USAGE_FILES, SplitRef, find_csv_files, load_splits
from fer_lightning.labels import EMOTIONS, FERPLUS_EMOTIONS, NUM_CLASSES


def summarize(path: str | Path, out: TextIO, on_bad_row: str = "error") -> int:
    """Parse the dataset at ``path`` (uncached) and print, per split, the row count and class
    histogram, then exact duplicate images within and across splits. Returns the number of bad
    rows skipped (``on_bad_row="skip"``); raises ``DatasetError`` otherwise. A FER+ label file,
    or one in the folder ``path``, is checked and summarised by :func:`summarize_votes`."""
    path = Path(path)
    if is_label_file(path):
        return summarize_votes(path, out, on_bad_row)
    files = find_csv_files(path)
    splits = load_splits(path, cache_dir=None, on_bad_row=on_bad_row)
    out.write(f"{path}\n" if files == [path] else f"{path}: {', '.join(map(str, files))}\n")
    skipped = 0
    for file_table in {id(ref.table): ref.table for ref in splits.values()}.values():
        skipped += len(file_table.skipped)
        if file_table.skipped:
            lines = ", ".join(str(line) for line, _ in file_table.skipped[:20])
            out.write(
                f"  skipped {len(file_table.skipped)} bad rows of {file_table.path}: {lines}\n"
            )
    width = max(len(e) for e in EMOTIONS)
    out.write(f"  {'split':<6} {'rows':>7}  " + " ".join(f"{e:>{width}}" for e in EMOTIONS) + "\n")
    for split in SPLITS:
        if split in splits:
            counts = np.bincount(splits[split].labels, minlength=NUM_CLASSES)
            row = " ".join(f"{c:>{width}}" for c in counts.tolist())
            out.write(f"  {split:<6} {len(splits[split]):>7}  {row}\n")
    for line in duplicate_report(splits):
        out.write(f"  {line}\n")
    label_file = find_label_file(path) if path.is_dir() else None
    if label_file is not None:
        tables = {id(ref.table): ref.table for ref in splits.values()}
        _write_votes(label_file, next(iter(tables.values())) if len(tables) == 1 else None, out)
    return skipped


def summarize_votes(path: Path, out: TextIO, on_bad_row: str = "error") -> int:
    """Check the FER+ label file ``path`` row by row against the FER2013 CSV beside it (when
    there is one) and print its vote statistics. Returns the bad image rows skipped."""
    beside = [path.parent / f"{name}{gz}" for name in USAGE_FILES for gz in ("", ".gz")]
    pixel_file = next((f for f in beside if f.is_file()), None)
    table = read_face_csv(pixel_file, on_bad_row) if pixel_file is not None else None
    out.write(f"{path}\n")
    _write_votes(path, table, out)
    return len(table.skipped) if table is not None else 0


def _write_votes(label_file: Path, table: FaceTable | None, out: TextIO) -> None:
    votes = read_votes(label_file)
    if table is None:
        out.write(
            f"  {label_file.name}: {len(votes)} rows, not checked against the images (no "
            f"{' or '.join(USAGE_FILES)} beside it)\n"
        )
    else:
        check_alignment(votes, table)
        out.write(
            f"  {label_file.name}: {len(votes)} rows, row by row the same as {table.path} "
            "(Usage on every row; Image names in row order)\n"
        )
    repeated = describe_repeated(votes)
    if repeated:
        out.write(f"  {repeated}\n")
        if table is not None:
            same = sum(
                bool(np.array_equal(table.faces[row], table.faces[twin]))
                for row, twin in votes.repeated
            )
            out.write(f"  of these rows, {same} hold the same image as the row they name\n")
    for line in vote_statistics(votes):
        out.write(f"  {line}\n")


def duplicate_report(splits: dict[str, SplitRef]) -> list[str]:
    """Lines counting exact duplicate images within each split and shared between splits."""
    where: dict[bytes, dict[str, int]] = {}
    for split, ref in splits.items():
        faces = np.ascontiguousarray(ref.faces).reshape(len(ref), -1)
        for row in faces:
            digest = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            seen = where.setdefault(digest, {})
            seen[split] = seen.get(split, 0) + 1
    within = {s: sum(n - 1 for d in where.values() if (n := d.get(s, 0)) > 1) for s in splits}
    names = list(splits)
    across = {
        (a, b): sum(1 for d in where.values() if a in d and b in d)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    lines = [
        "duplicate images within a split (extra copies): "
        + ", ".join(f"{s} {n}" for s, n in within.items())
    ]
    if across:
        lines.append(
            "distinct images found in two splits: "
            + ", ".join(f"{a}-{b} {n}" for (a, b), n in across.items())
        )
    return lines


def vote_statistics(votes: VoteTable) -> list[str]:
    """Lines for ``data check``: per split, rows, votes per row, unanimous rows, rows dropped
    for majority labels by reason, and the majority labels' class histogram."""
    width = max(len(name) for name in FERPLUS_EMOTIONS)
    reasons = (NO_IMAGE, UNKNOWN, NO_MAJORITY)
    lines = [
        "FER+ votes (majority labels; validation and test always use these):",
        f"{'split':<6} {'rows':>7} {'votes/row':>9} {'unanimous':>9}  "
        + " ".join(f"{reason:>{len(reason)}}" for reason in reasons)
        + "  "
        + " ".join(f"{name:>{width}}" for name in FERPLUS_EMOTIONS),
    ]
    for code, split in enumerate(SPLITS):
        rows = np.flatnonzero(votes.usage == code)
        if rows.size == 0:
            continue
        counts = votes.votes[rows]
        labels, reason = majority_labels(counts, votes.has_image[rows])
        per_row = counts.sum(axis=1)
        unanimous = int(np.count_nonzero(counts.max(axis=1) == per_row))
        dropped = " ".join(
            f"{int(np.count_nonzero(reason == DROP_REASONS.index(r))):>{len(r)}}" for r in reasons
        )
        histogram = np.bincount(labels[labels >= 0], minlength=len(FERPLUS_EMOTIONS))
        lines.append(
            f"{split:<6} {rows.size:>7} {per_row.mean():>9.2f} {unanimous:>9}  {dropped}  "
            + " ".join(f"{n:>{width}}" for n in histogram.tolist())
        )
    train = np.flatnonzero(votes.usage == 0)
    if train.size:
        _, reason = label_distributions(votes.votes[train], votes.has_image[train])
        spread = int(np.count_nonzero(reason == DROP_REASONS.index(SPREAD)))
        unknown = int(np.count_nonzero(reason == DROP_REASONS.index(UNKNOWN)))
        lines.append(
            f"training rows dropped in the distribution modes (probability, crossentropy): "
            f"{NO_IMAGE} {int(np.count_nonzero(~votes.has_image[train]))}, {UNKNOWN} "
            f"{unknown}, {SPREAD} {spread}"
        )
    return lines
