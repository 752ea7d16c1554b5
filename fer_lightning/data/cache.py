"""On-disk cache of parsed CSVs: parse a file once, then memory-map the arrays in every run and
every process.

An entry is a folder of ``.npy`` files named by a hash of the file's whole content, so that any
edit, even one that keeps the size and modification time (``cp -p``, tar, rsync), is parsed
again. The content hash of a file is remembered beside the entries with the file's full stat
signature, including its change time, which no copy tool can set: an unchanged file is not read
twice. Entries are written to a temporary folder and renamed into place, so concurrent processes
(DDP) never read a half-written one, and they are checked (shapes, label range, row count)
before use: a damaged entry is rebuilt.
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
from fer_lightning.data.csv_writer import write_atomically
from fer_lightning.data.errors import DatasetNotFoundError
from fer_lightning.labels import FACE_SIZE, NUM_CLASSES

log = logging.getLogger(__name__)

CACHE_VERSION = 2
_HASH_CHUNK = 1 << 22
_HASHES_FILE = "content-hashes.json"


def content_hash(path: Path) -> str:
    """Hex BLAKE2b digest of the file's bytes."""
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_signature(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


def cache_key(path: Path, cache_dir: Path | None = None) -> str:
    """Hex key of the file's content (and of the cache format). With ``cache_dir``, the content
    hash is remembered there against the file's stat signature and reused while it holds."""
    signature, resolved = _stat_signature(path), str(path.resolve())
    known = _read_hashes(cache_dir) if cache_dir is not None else {}
    entry = known.get(resolved)
    if isinstance(entry, dict) and entry.get("stat") == signature and entry.get("hash"):
        digest = str(entry["hash"])
    else:
        digest = content_hash(path)
        if cache_dir is not None:
            _remember_hash(cache_dir, resolved, signature, digest)
    return f"v{CACHE_VERSION}-{digest}"


def _read_hashes(cache_dir: Path) -> dict:
    try:
        content = json.loads((cache_dir / _HASHES_FILE).read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: hashes are computed again
    return content if isinstance(content, dict) else {}


def _remember_hash(cache_dir: Path, resolved: str, signature: str, digest: str) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        known = _read_hashes(cache_dir)
        known[resolved] = {"stat": signature, "hash": digest}
        write_atomically(cache_dir / _HASHES_FILE, json.dumps(known).encode())
    except OSError as err:  # a read-only cache folder: hash again next time
        log.debug("Could not remember the content hash in %s (%s).", cache_dir, err)


def entry_dir(path: Path, cache_dir: Path) -> Path:
    """The cache folder for ``path`` (it may not exist yet)."""
    name = path.name.split(".")[0][:40] or "data"
    return cache_dir / f"{name}-{cache_key(path, cache_dir)}"


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
        skipped = [(int(line), str(reason)) for line, reason in meta["skipped"]]
        _check_entry(meta, faces, labels, usage)
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("Replacing a damaged data cache entry %s (%s).", entry, err)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return FaceTable(str(path), faces, labels, usage, skipped)


def _check_entry(
    meta: dict, faces: np.ndarray, labels: np.ndarray, usage: np.ndarray | None
) -> None:
    """Raise ValueError unless the arrays are what the parser writes."""
    rows = int(meta["rows"])
    if faces.dtype != np.uint8 or faces.shape != (rows, FACE_SIZE, FACE_SIZE):
        raise ValueError(f"faces {faces.dtype} {faces.shape}, expected ({rows}, 48, 48) uint8")
    if labels.shape != (rows,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels {labels.dtype} {labels.shape}, expected ({rows},) integers")
    if rows and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels outside 0-{NUM_CLASSES - 1}")
    if usage is not None and (
        usage.shape != (rows,) or (rows and not 0 <= usage.min() <= usage.max() <= 2)
    ):
        raise ValueError("usage codes outside 0-2 or of the wrong length")


def _write_entry(entry: Path, table: FaceTable) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        # mkdtemp makes the folder 0700: give the entry a new folder's usual permissions, so
        # that everyone who may read the data folder may read its cache too.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
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
