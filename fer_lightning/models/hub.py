"""The published files, downloaded on first use, verified, and read from a local cache afterwards.

>>> from fer_lightning.models.checkpoints import load_model
>>> net = load_model("pretrained:resmasking_dropout1")   # downloads ~570 MB once

Files are looked up in :func:`cache_dir` first (no network at all when present), then fetched
from each of the file's sources in turn (the authors' Hugging Face repository, then their GitHub
release). A download is written to a locked ``.part`` file in the cache folder, stopped at the
file's known size, and moved into place only once it is verified: its SHA-256 and size where
they are published (:mod:`.presets` says which files are pinned), and in every case that it
loads as what it claims to be (a checkpoint strictly into its architecture, the face detector's
ONNX file into OpenCV). ``.part`` files of killed downloads are removed when no process holds
them. A source that cannot be reached is reported once, without retries; a local error (a full
disk, a read-only cache, a folder in the way) stops at once, naming the path and the cause.

Environment: ``FER_CACHE_DIR`` (cache folder); ``FER_RELEASE_URL`` (a mirror of the files; when
set it is the only source); ``HF_ENDPOINT`` (a Hugging Face mirror); ``FER_VERIFY_CHECKSUMS=0``
(accept bytes whose SHA-256 or size differ from the published ones, for a private mirror or a
test that serves other files on purpose; they must still load); ``HF_HUB_OFFLINE=1`` (no
download at all). Offline, put the file at ``cache_dir() / filename`` by hand.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import cv2
from tqdm.auto import tqdm

from fer_lightning.models.checkpoint_reader import (
    build_network,
    extract_state_dict,
    read_checkpoint,
)
from fer_lightning.models.errors import CheckpointError, PretrainedDownloadError
from fer_lightning.models.presets import (
    HF_REPO_ID,
    RELEASE_URL,
    PublishedFile,
    published_checkpoints,
)

try:  # POSIX: a lock on each .part file tells live downloads from abandoned ones
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "PRETRAINED_FILES",
    "PRETRAINED_PREFIX",
    "PretrainedDownloadError",
    "cache_dir",
    "checkpoint_entry",
    "fetch",
    "resolve_checkpoint",
    "verified_cache",
]

#: Prefix that makes a checkpoint argument name a published file: ``pretrained:<name>``.
PRETRAINED_PREFIX = "pretrained:"
DEFAULT_CACHE_DIR = "~/.cache/fer_lightning"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"

CONNECT_TIMEOUT_S = 3.0  # reaching a source: offline, each source fails within this
READ_TIMEOUT_S = 30.0  # per read of a transfer that has started
# Pauses before the retries of a transfer that started and broke off (1 + len(...) attempts).
RETRY_DELAYS_S: tuple[float, ...] = (1.0, 3.0)
# A .part file that no process locks and that has not grown for this long is abandoned.
ABANDONED_AFTER_S = 60.0
_CHUNK = 1 << 20

#: YuNet, OpenCV's face detector (opencv_zoo, MIT); pinned to the SHA-256 and size that
#: OpenCV publishes in its Git LFS pointer (models/face_detection_yunet, opencv_zoo 82b38c8).
YUNET_FILE = PublishedFile(
    "face_detection_yunet_2023mar.onnx",
    sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    size=232_589,
)

#: Name -> published file: every architecture's published checkpoint (:mod:`.presets`) and the
#: face detector. ``pretrained:<name>`` refers to the entries with an ``arch``.
PRETRAINED_FILES: dict[str, PublishedFile] = {**published_checkpoints(), "yunet": YUNET_FILE}


class _Truncated(OSError):
    """The connection ended before the announced ``Content-Length`` arrived."""


class _Unreachable(OSError):
    """The source could not be reached at all (no network, refused, unknown host)."""


class _Rejected(ValueError):
    """The bytes arrived but are not the file: wrong size or checksum, or it does not load."""


class _LocalError(Exception):
    """Writing into the cache failed: a local problem, not the network's."""

    def __init__(self, path: Path, error: OSError) -> None:
        self.path, self.error = path, error
        cause = error.strerror or str(error) or type(error).__name__
        code = errno.errorcode.get(error.errno or 0)
        super().__init__(f"{path}: {cause}" + (f" ({code})" if code else ""))


def cache_dir() -> Path:
    """Folder of the downloaded files: ``$FER_CACHE_DIR``, else ``~/.cache/fer_lightning``."""
    return Path(os.environ.get("FER_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def release_url() -> str:
    """Base URL of the release assets: ``$FER_RELEASE_URL``, else the GitHub release v0.0.1."""
    return (os.environ.get("FER_RELEASE_URL") or RELEASE_URL).rstrip("/")


def huggingface_url(filename: str) -> str:
    """Where ``filename`` is served by the Hugging Face repository (``$HF_ENDPOINT`` mirror)."""
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")
    return f"{endpoint}/{HF_REPO_ID}/resolve/main/{filename}"


def source_urls(entry: PublishedFile) -> list[str]:
    """The URLs to try for ``entry``, in order: ``$FER_RELEASE_URL`` alone when it is set."""
    mirror = os.environ.get("FER_RELEASE_URL")
    if mirror:
        return [f"{mirror.rstrip('/')}/{entry.filename}"]
    return [
        huggingface_url(entry.filename)
        if source == "huggingface"
        else f"{source.rstrip('/')}/{entry.filename}"
        for source in entry.sources
    ]


def checksums_verified() -> bool:
    """False when ``FER_VERIFY_CHECKSUMS=0`` lets other bytes than the published ones in."""
    return os.environ.get("FER_VERIFY_CHECKSUMS", "1").strip().lower() not in {"0", "false", "no"}


def _offline() -> bool:
    # The values huggingface_hub itself reads as true.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def known_file(name: str) -> PublishedFile:
    """The table entry of ``name``; :class:`CheckpointError` listing the names otherwise."""
    try:
        return PRETRAINED_FILES[name]
    except KeyError:
        raise CheckpointError(
            f"Unknown pretrained file {name!r}. Known: {', '.join(sorted(PRETRAINED_FILES))}."
        ) from None


def checkpoint_entry(path_or_name: str | Path) -> PublishedFile:
    """The entry of a checkpoint name, given as ``pretrained:<name>`` or ``<name>``."""
    name = str(path_or_name).removeprefix(PRETRAINED_PREFIX)
    known = sorted(n for n, f in PRETRAINED_FILES.items() if f.is_checkpoint)
    entry = PRETRAINED_FILES.get(name)
    if entry is None or not entry.is_checkpoint:
        what = "not a checkpoint" if entry is not None else "unknown"
        raise CheckpointError(
            f"Pretrained checkpoint {name!r} is {what}. Known: "
            f"{', '.join(PRETRAINED_PREFIX + n for n in known)}."
        )
    return entry


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """``pretrained:<name>`` -> the cached (downloaded if need be) file; anything else -> the
    same path as a :class:`Path`."""
    if not str(path_or_name).startswith(PRETRAINED_PREFIX):
        return Path(path_or_name)
    checkpoint_entry(path_or_name)  # unknown names fail before any download
    return fetch(str(path_or_name).removeprefix(PRETRAINED_PREFIX))


def delete_advice(path: Path) -> str:
    return (
        f"{path} is a file of the download cache that does not load: delete it and run again "
        "to download it anew."
    )


@contextlib.contextmanager
def verified_cache(path: Path) -> Iterator[None]:
    """Around the loading of a cached file: a :class:`CheckpointError` gains the advice to
    delete the file (a cache cannot repair itself)."""
    try:
        yield
    except PretrainedDownloadError:
        raise
    except CheckpointError as error:
        raise CheckpointError(f"{error} {delete_advice(path)}") from None


def fetch(name: str) -> Path:
    """The local path of the published file ``name`` (a key of :data:`PRETRAINED_FILES`),
    downloaded into :func:`cache_dir` on first use. Raises :class:`PretrainedDownloadError`
    when it is neither cached nor downloadable, or cannot be kept."""
    entry = known_file(name)
    target = cache_dir() / entry.filename
    if target.is_file():
        _check_cached(target, entry)
        return target
    if target.exists() or target.is_symlink():
        raise PretrainedDownloadError(
            f"Cannot keep {entry.filename} in the cache: {target} is in the way (not a "
            "regular file). Remove it, or set FER_CACHE_DIR to another folder."
        )
    urls = source_urls(entry)
    if _offline():
        raise PretrainedDownloadError(
            f"Could not get {entry.filename!r}: HF_HUB_OFFLINE is set, so nothing was "
            f"downloaded. Put the file at {target} (from {' or '.join(urls)}) or unset "
            "HF_HUB_OFFLINE."
        )
    try:
        _make_folder(target.parent)
        remove_abandoned_parts(target)
        failures: list[str] = []
        for url in urls:
            try:
                _download_verified(url, entry, target)
                return target
            except _LocalError:
                raise
            except Exception as error:  # each source's failure is reported, once
                failures.append(f"{url}: {_reason(error)}")
    except _LocalError as error:
        raise PretrainedDownloadError(
            f"Could not save {entry.filename} into the cache: {error}. Free space or fix the "
            "folder, or set FER_CACHE_DIR to a writable folder."
        ) from None
    # One line: the commands print user errors as a single message.
    raise PretrainedDownloadError(
        f"Could not get the pretrained file {entry.filename!r} ({'; '.join(failures)}). "
        f"Download it where there is internet access from {' or '.join(urls)} and put it "
        f"at {target}."
    )


def _check_cached(target: Path, entry: PublishedFile) -> None:
    """A pinned file of the wrong size in the cache is named, with the advice to delete it
    (cheap: one stat; the checksum was verified when it was downloaded)."""
    if entry.size is None or not checksums_verified():
        return
    size = target.stat().st_size
    if size != entry.size:
        raise PretrainedDownloadError(
            f"{target} holds {size} bytes, not the published {entry.size}: it is damaged or "
            "another file; delete it and run again to download it anew."
        )


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _LocalError(folder, error) from None


def _reason(error: BaseException) -> str:
    """``error`` on one line."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    return " ".join(str(error).split()) or type(error).__name__


def _download_verified(url: str, entry: PublishedFile, target: Path) -> None:
    """Download ``url``, verify it and move it into place as ``target``; retries only a
    transfer that started and broke off (or a server error)."""
    for attempt in range(len(RETRY_DELAYS_S) + 1):
        part = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
        try:
            with _open_part(part) as out:
                _download(url, out, part, entry)
            _verify(part, entry)
            try:
                os.replace(part, target)
            except OSError as error:
                raise _LocalError(target, error) from None
            log.info("Saved %s", target)
            return
        except urllib.error.HTTPError as error:
            if error.code < 500 or attempt == len(RETRY_DELAYS_S):
                raise  # 404 and the like do not get better by asking again
            log.warning("%s failed (%s); retrying.", url, _reason(error))
        except (_Truncated, http.client.HTTPException, TimeoutError, ConnectionError) as error:
            if attempt == len(RETRY_DELAYS_S):
                raise
            log.warning("Download of %s broke off (%s); retrying.", url, _reason(error))
        finally:
            part.unlink(missing_ok=True)
        time.sleep(RETRY_DELAYS_S[attempt])


@contextlib.contextmanager
def _open_part(part: Path) -> Iterator[BinaryIO]:
    """``part`` created and locked for writing (the lock tells a live download from one whose
    process was killed)."""
    try:
        out = part.open("xb")
    except OSError as error:
        raise _LocalError(part, error) from None
    with out:
        if fcntl is not None:
            # Where the filesystem has no locks, the .part is never taken for abandoned.
            with contextlib.suppress(OSError):
                fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield out


def remove_abandoned_parts(target: Path) -> list[Path]:
    """Delete the ``.part`` files of ``target`` that no process holds (their download was
    killed) and that have not grown for :data:`ABANDONED_AFTER_S`; returns them."""
    removed = []
    for part in target.parent.glob(f".{target.name}.*.part"):
        try:
            if time.time() - part.stat().st_mtime < ABANDONED_AFTER_S:
                continue
            with part.open("rb") as held:
                if fcntl is not None:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError: still written
                part.unlink()
        except OSError:
            continue
        log.info("Removed %s, left by a download that was stopped.", part)
        removed.append(part)
    return removed


def _connect_probe(url: str) -> None:
    """Fail within :data:`CONNECT_TIMEOUT_S` when ``url``'s host (or its proxy) cannot be
    reached, so that no network costs seconds, not minutes."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxied = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxied.hostname or host, proxied.port or 80
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        cause = "timed out" if isinstance(error, TimeoutError) else (error.strerror or error)
        raise _Unreachable(f"cannot reach {host}:{port} ({cause}: no network?)") from None


def _download(url: str, out: BinaryIO, part: Path, entry: PublishedFile) -> None:
    """Write the body of ``url`` to ``out``, never more than the file's known size; raises
    :class:`_Truncated` if it ends early and :class:`_Rejected` if it is too long."""
    _connect_probe(url)
    log.info("Downloading %s", url)
    limit = entry.size_limit
    with urllib.request.urlopen(url, timeout=READ_TIMEOUT_S) as response:
        header = response.headers.get("Content-Length")
        expected = int(header) if header and header.isdigit() else None
        if expected is not None and limit is not None and expected > limit:
            raise _Rejected(
                f"the server announces {expected} bytes, more than the {limit} that "
                f"{entry.filename} has; nothing was downloaded"
            )
        cap = min(x for x in (expected, limit) if x is not None) if expected or limit else None
        received = 0
        # disable=None: a progress bar on terminals only.
        with tqdm(total=expected, unit="B", unit_scale=True, desc=part.name, disable=None) as bar:
            # read(n) returns b"" when the connection closes early instead of raising, so
            # completeness is judged by the byte count.
            while chunk := response.read(_CHUNK):
                received += len(chunk)
                if cap is not None and received > cap:
                    raise _Rejected(
                        f"the server sent more than the {cap} bytes "
                        f"{'it announced' if cap == expected else 'the file has'}; stopped there"
                    )
                _write(out, chunk, part)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise _Truncated(
            f"the transfer broke off after {received} of {expected} bytes (incomplete download)"
        )
    if received == 0:
        raise _Truncated("the server sent an empty file")


def _write(out: BinaryIO, chunk: bytes, part: Path) -> None:
    try:
        out.write(chunk)
    except OSError as error:
        raise _LocalError(part, error) from None


def _verify(part: Path, entry: PublishedFile) -> None:
    """Refuse bytes that are not ``entry``'s file: its published size and SHA-256 (unless
    ``FER_VERIFY_CHECKSUMS=0``), and that it loads as what it is."""
    if checksums_verified():
        size = part.stat().st_size
        if entry.size is not None and size != entry.size:
            raise _Rejected(
                f"the download has {size} bytes, not the published {entry.size}; it was not kept"
            )
        if entry.sha256 is not None:
            with part.open("rb") as data:
                digest = hashlib.file_digest(data, "sha256").hexdigest()
            if digest != entry.sha256:
                raise _Rejected(
                    f"its SHA-256 {digest} is not the published {entry.sha256}; it was not kept "
                    "(FER_VERIFY_CHECKSUMS=0 accepts other bytes from a mirror on purpose)"
                )
    if entry.is_checkpoint:
        _check_checkpoint(part, entry)
    elif entry.filename.endswith(".onnx"):
        _check_onnx(part)


def _check_checkpoint(path: Path, entry: PublishedFile) -> None:
    """Refuse a file that is not a published-format checkpoint of ``entry.arch`` (an HTML
    error page, a different file)."""
    try:
        content = read_checkpoint(path)
        state_dict, meta = extract_state_dict(content, path)
        if meta["format"] != "published RMN":
            raise CheckpointError(f"it is a {meta['format']}, not a dict with 'net'")
        build_network(state_dict, str(entry.arch), entry.filename)
    except CheckpointError as error:
        reason = str(error).replace(f"{path} ", "").replace(str(path), "it")
        raise _Rejected(
            f"the downloaded file is not a published {entry.arch} checkpoint and was not kept "
            f"({reason})"
        ) from None


def _check_onnx(path: Path) -> None:
    try:
        cv2.dnn.readNetFromONNX(str(path))
    except cv2.error:
        raise _Rejected(
            "OpenCV cannot load the downloaded file as an ONNX model (an error page?); it was "
            "not kept"
        ) from None
