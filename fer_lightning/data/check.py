"""``check``: validate dataset files or folders and summarise them per split."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TextIO

import numpy as np

from fer_lightning.data.csv_reader import SPLITS
from fer_lightning.data.sources import SplitRef, find_csv_files, load_splits
from fer_lightning.labels import EMOTIONS, NUM_CLASSES


def summarize(path: str | Path, out: TextIO, on_bad_row: str = "error") -> int:
    """Parse the dataset at ``path`` (uncached) and print, per split, the row count and class
    histogram, then exact duplicate images within and across splits. Returns the number of bad
    rows skipped (``on_bad_row="skip"``); raises ``DatasetError`` otherwise."""
    path = Path(path)
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
    return skipped


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
