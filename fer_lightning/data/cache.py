"""On-disk cache of parsed CSVs: parse a file once, then memory-map the arrays in every run and
every process.

An entry is a folder of ``.npy`` files named by a key made of the file's absolute path, size,
modification time and a hash of its first and last 64 KiB, so that a replaced or edited file is
parsed again. Entries are written to a temporary folder and renamed into place, so concurrent
processes (DDP) never read a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fer_lightning.data.csv_reader import FaceTable, read_face_csv
from fer_lightning.data.errors import DatasetNotFoundError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_HASH_SPAN = 1 << 16


def cache_key(path: Path) -> str:
    """Hex key of a file's identity and content sample (changes when the file changes)."""
    stat = path.stat()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"v{CACHE_VERSION}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    with path.open("rb") as handle:
        digest.update(handle.read(_HASH_SPAN))
        if stat.st_size > _HASH_SPAN:
            handle.seek(max(stat.st_size - _HASH_SPAN, _HASH_SPAN))
            digest.update(handle.read(_HASH_SPAN))
    return digest.hexdigest()


def entry_dir(path: Path, cache_dir: Path) -> Path:
    """The cache folder for ``path`` (it may not exist yet)."""
    name = path.name.split(".")[0][:40] or "data"
    return cache_dir / f"{name}-{cache_key(path)}"


def load_table(
    path: str | Path, cache_dir: str | Path | None = None, on_bad_row: str = "error"
) -> FaceTable:
    """Parsed content of a FER-format CSV, from the cache when it is there.

    With ``cache_dir=None`` the file is parsed every time. Cached arrays are memory-mapped
    read-only, so N processes share one copy in the page cache. A file cached while skipping
    bad rows is parsed again when ``on_bad_row="error"``, so that the error is raised.
    """
    path = Path(path)
    if not path.is_file():
        if path.exists():
            return read_face_csv(path, on_bad_row)  # a folder: let the reader say so
        raise DatasetNotFoundError(f"{path}: no such file.")
    if cache_dir is None:
        return read_face_csv(path, on_bad_row)
    entry = entry_dir(path, Path(cache_dir))
    table = _read_entry(entry, path)
    if table is not None and not (table.skipped and on_bad_row == "error"):
        _report_skipped(table)
        return table
    table = read_face_csv(path, on_bad_row)
    try:
        _write_entry(entry, table)
    except OSError as err:  # a read-only data folder: run uncached rather than fail
        log.warning("Could not write the data cache %s (%s); parsing every run.", entry, err)
        return table
    return _read_entry(entry, path) or table


def _report_skipped(table: FaceTable) -> None:
    if table.skipped:
        lines = ", ".join(str(line) for line, _ in table.skipped[:20])
        more = ", ..." if len(table.skipped) > 20 else ""
        log.warning(
            "%s: skipped %d bad rows (on_bad_row=skip), lines %s%s",
            table.path,
            len(table.skipped),
            lines,
            more,
        )


def _read_entry(entry: Path, path: Path) -> FaceTable | None:
    meta_file = entry / "meta.json"
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        faces = np.load(entry / "faces.npy", mmap_mode="r")
        labels = np.load(entry / "labels.npy")
        usage = np.load(entry / "usage.npy") if meta["has_usage"] else None
    except (OSError, ValueError, KeyError) as err:
        log.warning("Replacing a damaged data cache entry %s (%s).", entry, err)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    skipped = [(int(line), str(reason)) for line, reason in meta["skipped"]]
    return FaceTable(str(path), faces, labels, usage, skipped)


def _write_entry(entry: Path, table: FaceTable) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        np.save(tmp / "faces.npy", np.ascontiguousarray(table.faces))
        np.save(tmp / "labels.npy", table.labels)
        if table.usage is not None:
            np.save(tmp / "usage.npy", table.usage)
        meta = {
            "version": CACHE_VERSION,
            "source": table.path,
            "rows": len(table),
            "has_usage": table.usage is not None,
            "skipped": table.skipped,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if (entry / "meta.json").is_file():
            # Another process (DDP rank, DataLoader worker) wrote the same entry first and may be
            # reading it: keep it, drop ours.
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if entry.exists():  # a damaged entry (no meta.json): replace it
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (entry / "meta.json").is_file():  # lost a race to an identical entry: fine
            return
        raise
