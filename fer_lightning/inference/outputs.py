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
"""

from __future__ import annotations

import errno
import os
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
