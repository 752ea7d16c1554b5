"""The published weights, downloaded on first use and read from a local cache afterwards.

>>> from fer_lightning.models.checkpoints import load_model
>>> net = load_model("pretrained:resmasking_dropout1")   # downloads ~550 MB once

Files are looked up in :func:`cache_dir` first (no network at all when present), then fetched
from the Hugging Face repository and, failing that, from the GitHub release. A download is
written under a temporary name in the cache folder and renamed into place only once it is
complete (and, for checkpoints, readable), so an interrupted download is never taken for the
file. Offline, put the file at ``cache_dir() / filename`` by hand.

Environment: ``FER_CACHE_DIR`` (cache folder), ``FER_RELEASE_URL`` (a mirror of the release
assets; when set it is the only source), ``HF_HUB_OFFLINE=1`` (no download at all).
"""

from __future__ import annotations

import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from fer_lightning.models.checkpoints import CheckpointError

log = logging.getLogger(__name__)

#: Prefix that makes a checkpoint argument name a published file: ``pretrained:<name>``.
PRETRAINED_PREFIX = "pretrained:"

HF_REPO_ID = "phamquiluan/ResidualMaskingNetwork"
DEFAULT_RELEASE_URL = (
    "https://github.com/phamquiluan/ResidualMaskingNetwork/releases/download/v0.0.1"
)
DEFAULT_CACHE_DIR = "~/.cache/fer_lightning"

DOWNLOAD_TIMEOUT_S = 30.0  # per connection attempt and per read, not for the whole transfer
# Pauses before the retries of a failed release-URL transfer (so 1 + len(...) attempts).
RETRY_DELAYS_S: tuple[float, ...] = (1.0, 3.0)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PretrainedFile:
    """A published file: its ``filename`` in both places, and the ``arch`` of the network it
    holds (``None`` for files that are not checkpoints, such as the face detector)."""

    filename: str
    arch: str | None = None

    @property
    def is_checkpoint(self) -> bool:
        return self.arch is not None


#: Name -> published file. ``pretrained:<name>`` refers to the entries with an ``arch``.
PRETRAINED_FILES: dict[str, PretrainedFile] = {
    "resmasking_dropout1": PretrainedFile(
        "Z_resmasking_dropout1_rot30_2019Nov30_13.32", arch="resmasking_dropout1"
    ),
    "yunet": PretrainedFile("face_detection_yunet_2023mar.onnx"),
}


class PretrainedDownloadError(CheckpointError):
    """A published file is not in the cache and could not be downloaded from any source."""


class _Truncated(OSError):
    """The connection ended before the announced ``Content-Length`` arrived."""


class _NotACheckpoint(ValueError):
    """The downloaded bytes are not a published-format checkpoint."""


def cache_dir() -> Path:
    """Folder of the downloaded files: ``$FER_CACHE_DIR``, else ``~/.cache/fer_lightning``."""
    return Path(os.environ.get("FER_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def release_url() -> str:
    """Base URL of the release assets: ``$FER_RELEASE_URL``, else the GitHub release v0.0.1."""
    return (os.environ.get("FER_RELEASE_URL") or DEFAULT_RELEASE_URL).rstrip("/")


def huggingface_url(filename: str) -> str:
    """Where ``filename`` can be downloaded from the Hugging Face repository in a browser."""
    return f"https://huggingface.co/{HF_REPO_ID}/resolve/main/{filename}"


def _offline() -> bool:
    # The values huggingface_hub itself reads as true.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def known_file(name: str) -> PretrainedFile:
    """The table entry of ``name``; :class:`CheckpointError` listing the names otherwise."""
    try:
        return PRETRAINED_FILES[name]
    except KeyError:
        raise CheckpointError(
            f"Unknown pretrained file {name!r}. Known: {', '.join(sorted(PRETRAINED_FILES))}."
        ) from None


def checkpoint_entry(path_or_name: str | Path) -> PretrainedFile:
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


def fetch(name: str) -> Path:
    """The local path of the published file ``name`` (a key of :data:`PRETRAINED_FILES`),
    downloaded into :func:`cache_dir` on first use. Raises :class:`PretrainedDownloadError`
    when it is neither cached nor downloadable."""
    entry = known_file(name)
    target = cache_dir() / entry.filename
    if target.is_file():
        return target

    hf_url = huggingface_url(entry.filename)
    url = f"{release_url()}/{entry.filename}"
    failures: list[str] = []
    if _offline():
        failures.append("HF_HUB_OFFLINE is set, so nothing was downloaded")
    else:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PretrainedDownloadError(
                f"Cannot create the cache folder {target.parent} ({error}); set FER_CACHE_DIR "
                "to a writable folder."
            ) from None
        if os.environ.get("FER_RELEASE_URL"):
            # A mirror the user chose (or a test server): the internet is not asked.
            failures.append(f"{hf_url}: skipped because FER_RELEASE_URL is set")
        else:
            try:
                _from_huggingface(entry, target)
                return target
            except Exception as error:  # not installed, no network, 404, bad file...
                failures.append(f"{hf_url}: {_reason(error)}")
        try:
            _from_url(url, entry, target)
            return target
        except Exception as error:
            failures.append(f"{url}: {_reason(error)}")
    # One line: the commands print user errors as a single message.
    raise PretrainedDownloadError(
        f"Could not get the pretrained file {entry.filename!r} ({'; '.join(failures)}). "
        f"Download it on a machine with internet access from {hf_url} or {url} and put it "
        f"at {target}."
    )


def _reason(error: BaseException) -> str:
    """``error`` on one line (huggingface_hub's messages span several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, ModuleNotFoundError) and error.name == "huggingface_hub":
        return "huggingface_hub is not installed (pip install huggingface_hub)"
    return text


def _from_huggingface(entry: PretrainedFile, target: Path) -> None:
    """Download through huggingface_hub and move the file into the cache as ``target``."""
    from huggingface_hub import hf_hub_download

    # huggingface_hub keeps its own cache; a private one inside ours, moved from and then
    # deleted, avoids a second copy of the 550 MB and keeps the move on one filesystem.
    with tempfile.TemporaryDirectory(prefix=".hf-", dir=target.parent) as tmp:
        downloaded = hf_hub_download(
            repo_id=HF_REPO_ID,
            filename=entry.filename,
            cache_dir=tmp,
            library_name="fer-lightning",
        )
        # The snapshot entry is a symlink to a blob where the filesystem supports links.
        _install(Path(downloaded).resolve(), entry, target)


def _from_url(url: str, entry: PretrainedFile, target: Path) -> None:
    """Download ``url`` into ``target``, retrying transfers that broke off."""
    for attempt in range(len(RETRY_DELAYS_S) + 1):
        part = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
        try:
            _download(url, part)
            _install(part, entry, target)
            return
        except urllib.error.HTTPError as error:
            if error.code < 500 or attempt == len(RETRY_DELAYS_S):
                raise  # 404 and the like do not get better by asking again
            log.warning("%s failed (%s); retrying.", url, error)
        except (http.client.HTTPException, OSError) as error:
            # Broken-off transfers (_Truncated), timeouts, refused connections, DNS failures.
            if attempt == len(RETRY_DELAYS_S):
                raise
            log.warning("Download of %s failed (%s); retrying.", url, error)
        finally:
            part.unlink(missing_ok=True)
        time.sleep(RETRY_DELAYS_S[attempt])


def _download(url: str, part: Path) -> None:
    """Write the body of ``url`` to ``part``; :class:`_Truncated` if it ends early."""
    from tqdm.auto import tqdm

    log.info("Downloading %s", url)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        header = response.headers.get("Content-Length")
        expected = int(header) if header and header.isdigit() else None
        received = 0
        # disable=None: a progress bar on terminals only.
        with (
            part.open("xb") as out,
            tqdm(total=expected, unit="B", unit_scale=True, desc=part.name, disable=None) as bar,
        ):
            # read(n) returns b"" when the connection closes early instead of raising, so
            # completeness is judged by the byte count.
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if expected is not None and received != expected:
        raise _Truncated(
            f"the transfer broke off after {received} of {expected} bytes (incomplete download)"
        )
    if received == 0:
        raise _Truncated("the server sent an empty file")


def _install(candidate: Path, entry: PretrainedFile, target: Path) -> None:
    """Check ``candidate`` and rename it to ``target`` (atomic: same folder or below)."""
    if entry.is_checkpoint:
        _check_checkpoint(candidate)
    os.replace(candidate, target)
    log.info("Saved %s", target)


def _check_checkpoint(path: Path) -> None:
    """Refuse a file that is not a published-format checkpoint (an HTML error page, a
    different file)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # The first sentence: torch's messages go on with advice that does not apply here.
        first = str(error).strip().split("\n")[0].split(". ")[0]
        detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
        raise _NotACheckpoint(
            f"the downloaded file is not a PyTorch checkpoint ({detail}); it was not kept"
        ) from None
    if not (isinstance(content, dict) and isinstance(content.get("net"), dict)):
        raise _NotACheckpoint(
            "the downloaded file is not a published RMN checkpoint (a dict with 'net'); "
            "it was not kept"
        )
