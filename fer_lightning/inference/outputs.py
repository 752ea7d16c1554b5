"""Where predictions go: one output name per input, and files written whole or not at all.

Naming: an annotated copy keeps the input's relative path and name, suffix included, and gets
a suffix of its own only where the input's cannot be written (``d.png`` -> ``d.png``, ``d.gif``
-> ``d.gif.png``, ``clip.avi`` -> ``clip.avi.mp4``); folders are never flattened. Should two
names still meet (``d.gif`` and an input called ``d.gif.png``; ``A.jpg`` and ``a.jpg`` on a
case-insensitive disk), the later one in sorted order gets ``~2``, ``~3``... before its last
suffix. Inputs that keep their own name are served first, so they always do.

Writing: every file goes to a temporary name beside its target and is renamed into place when
complete, so an earlier output is replaced only by a whole new one, and a full disk leaves the
earlier files as they were. Names pass through Python as bytes (OpenCV never sees a path), so
any file name the file system allows works.

Runs: a run writes into a hidden staging folder beside its output folder and is moved into
place when it ends (:class:`StagedRun`), so the output folder holds one whole run: the earlier
one until the new one is complete, then the new one (an earlier run's folder is swapped out
whole, never mixed with a new run's files). A run that is interrupted leaves its files in place
only where there was nothing, with ``INCOMPLETE.txt`` saying so. A staging folder whose run
was killed is removed by the next run in the same parent folder: its lock is free (the kernel
releases a dead process's locks), which proves that no process writes there any more.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

# Image formats OpenCV encodes; other image inputs get a .png annotated copy.
WRITABLE_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_OUTPUT_SUFFIX = ".mp4"
TIMELINE_SUFFIX = ".emotions.png"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
# Every finished or interrupted run's folder holds this file (JSON: what wrote it, whether the
# run completed); a folder with it may be replaced whole by a later run.
RUN_MARKER = ".fer-predict-run.json"
INCOMPLETE_MARKER = "INCOMPLETE.txt"
STAGING_PREFIX = ".fer-predict-staging-"


class OutputFolderError(ValueError):
    """The output folder cannot take a run (it holds other files, or is a file)."""


class OutputWriteError(OSError):
    """An output file could not be written; the message names it and what to do."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        self.path = Path(path)
        self.cause = cause
        if cause.errno in DISK_FULL_ERRNOS:
            reason = "the disk is full (no space left on device)"
            advice = "free some space or choose another output_dir"
        else:
            reason = cause.strerror or str(cause) or type(cause).__name__
            advice = "check that the folder is writable"
        super().__init__(
            cause.errno,
            f"cannot write {self.path}: {reason}; {advice}. The inputs were not touched, and "
            "earlier files of that name are as they were.",
        )

    def __str__(self) -> str:
        return str(self.strerror)


def partial_path(path: Path, suffix: str = "") -> Path:
    """A temporary, ASCII-only name beside ``path``, renamed onto it when complete."""
    return path.parent / f".partial-{uuid.uuid4().hex[:12]}{suffix or path.suffix}"


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole (temporary file, then rename); :class:`OutputWriteError`
    on failure, with the temporary file removed."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = partial_path(path)
        with open(tmp, "wb") as stream:
            stream.write(data)
        os.replace(tmp, path)
    except OSError as error:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise OutputWriteError(path, error) from None
    return path


def encode_image(path: str | Path, image: np.ndarray) -> bytes:
    """``image`` (BGR or grayscale uint8) encoded in the format of ``path``'s suffix."""
    suffix = Path(path).suffix.lower()
    ok, encoded = cv2.imencode(suffix, image)
    if not ok:
        raise OutputWriteError(path, OSError(errno.EINVAL, f"OpenCV cannot encode {suffix}"))
    return encoded.tobytes()


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """``image`` written to ``path`` in the format of its suffix, whole or not at all."""
    return write_bytes(path, encode_image(path, image))


def annotated_name(relative: str, is_video: bool) -> str:
    """The preferred output name of an input: its own where its suffix can be written."""
    suffix = PurePosixPath(relative).suffix.lower()
    if is_video:
        return relative if suffix == VIDEO_OUTPUT_SUFFIX else relative + VIDEO_OUTPUT_SUFFIX
    return relative if suffix in WRITABLE_IMAGE_SUFFIXES else relative + ".png"


class OutputNames:
    """Hands out relative output names, never the same one twice (case-insensitively), and
    never a file name that another name uses as a folder or the other way round."""

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._files: set[str] = set()
        self._folders: set[str] = set()
        for name in reserved:
            self._take(name)

    def claim(self, preferred: str) -> str:
        """``preferred``, or ``stem~N.suffix`` with the smallest free N >= 2."""
        if self._free(preferred):
            return self._take(preferred)
        path = PurePosixPath(preferred)
        suffix = path.suffix if path.stem else ""
        stem = path.name[: len(path.name) - len(suffix)]
        number = 2
        while True:
            candidate = str(path.with_name(f"{stem}~{number}{suffix}"))
            if self._free(candidate):
                return self._take(candidate)
            number += 1

    def _free(self, name: str) -> bool:
        key = name.casefold()
        parents = [str(p).casefold() for p in PurePosixPath(name).parents if str(p) != "."]
        return (
            key not in self._files
            and key not in self._folders
            and not any(p in self._files for p in parents)
        )

    def _take(self, name: str) -> str:
        self._files.add(name.casefold())
        self._folders.update(
            str(p).casefold() for p in PurePosixPath(name).parents if str(p) != "."
        )
        return name


def plan_output_names(inputs: Iterable[tuple[str, bool]], names: OutputNames) -> dict[str, str]:
    """Relative input name -> relative annotated-output name, for ``(name, is_video)`` pairs,
    claimed from ``names``.

    Inputs whose output keeps their own name are served first, then the others in sorted
    order, so the result depends only on the set of inputs."""
    wanted = sorted((name, annotated_name(name, is_video)) for name, is_video in inputs)
    plan: dict[str, str] = {}
    for name, preferred in wanted:
        if preferred == name:
            plan[name] = names.claim(preferred)
    for name, preferred in wanted:
        if name not in plan:
            plan[name] = names.claim(preferred)
    return plan


def check_output_folder(target: Path, key: str = "output_dir") -> None:
    """Refuse a ``target`` that holds anything but an earlier run's outputs (which a new run
    replaces whole once it is complete)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise OutputFolderError(f"{key}={target} is a file; name a folder.")
    if not any(target.iterdir()) or (target / RUN_MARKER).is_file():
        return
    raise OutputFolderError(
        f"{key}={target} already holds files that no fer-predict run of this version wrote "
        f"(no {RUN_MARKER}): choose a new or empty folder, or remove them, so that results "
        "and other files are never mixed."
    )


def remove_abandoned_staging(parent: Path) -> list[Path]:
    """Remove the staging folders under ``parent`` whose run is dead (its lock is free, or it
    has no lock file: the lock is made first and removed last); the folders removed."""
    removed = []
    for lock_path in parent.glob(f"{STAGING_PREFIX}*.lock"):
        try:
            with open(lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                folder = lock_path.with_suffix("")
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
                lock_path.unlink(missing_ok=True)
        except OSError:  # held by a live run (or unreadable): not provably abandoned
            continue
    for folder in parent.glob(f"{STAGING_PREFIX}*"):
        if folder.is_dir() and not folder.with_name(folder.name + ".lock").exists():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class StagedRun:
    """A hidden folder beside ``target`` that a run writes into, moved onto ``target`` by
    :meth:`finish`. ``unique``: ``target`` is a default name, so a taken one becomes
    ``target_2``, ``target_3``... instead of being replaced."""

    def __init__(self, target: Path, unique: bool = False) -> None:
        self.target = Path(target)
        self.unique = unique
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.abandoned = remove_abandoned_staging(parent)
            handle, lock_name = tempfile.mkstemp(prefix=STAGING_PREFIX, suffix=".lock", dir=parent)
        except OSError as error:
            raise OutputWriteError(parent, error) from None
        self._lock_path = Path(lock_name)
        self._lock = os.fdopen(handle, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.path = self._lock_path.with_suffix("")
        try:
            self.path.mkdir()
        except OSError as error:
            self._release()
            raise OutputWriteError(self.path, error) from None

    def finish(self, complete: bool = True, note: str = "") -> Path | None:
        """Mark the run (complete, or not with ``note``) and move it onto the output folder;
        the folder it went to. An incomplete run is kept only where the folder is free (None:
        discarded, the earlier run stays as it was)."""
        record = {"command": "fer-predict", "complete": complete, "finished": time.time()}
        try:
            if not complete:
                write_bytes(self.path / INCOMPLETE_MARKER, (note.strip() + "\n").encode())
            write_bytes(self.path / RUN_MARKER, json.dumps(record).encode())
            if self.unique:
                return self._place_unique()
            occupied = self.target.is_dir() and any(self.target.iterdir())
            if occupied and not complete:
                self.discard()
                return None
            if occupied and _exchange(self.path, self.target):
                shutil.rmtree(self.path, ignore_errors=True)  # the earlier run, swapped out
            elif occupied:
                # No atomic exchange on this system: the earlier run is moved aside first (a
                # kill between the two renames leaves the folder missing).
                aside = self.path.with_name(self.path.name + "-replaced")
                os.rename(self.target, aside)
                os.rename(self.path, self.target)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(self.path, self.target)  # onto nothing, or an empty folder
        except OSError as error:
            self.discard()
            raise OutputWriteError(self.target, error) from None
        finally:
            self._release()
        return self.target

    def _place_unique(self) -> Path:
        for number in range(1, 10_000):
            name = self.target.name if number == 1 else f"{self.target.name}_{number}"
            candidate = self.target.with_name(name)
            try:
                os.rename(self.path, candidate)  # fails on a folder that holds anything
            except OSError as error:
                if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    continue
                raise
            return candidate
        raise OSError(errno.EEXIST, f"no free name beside {self.target}")

    def discard(self) -> None:
        """Remove the staging folder and everything in it."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if not self._lock.closed:
            self._lock_path.unlink(missing_ok=True)
            self._lock.close()


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot."""
    with contextlib.suppress(AttributeError, OSError):
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        at_fdcwd, rename_exchange = -100, 2
        return (
            renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
            == 0
        )
    return False
