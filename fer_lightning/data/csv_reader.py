"""Vectorised reader and validator for FER-format CSVs (``emotion``, ``pixels`` [, ``Usage``]).

One file -> a :class:`FaceTable`: uint8 faces (N, 48, 48), int64 labels (N,) and, when the file
has a ``Usage`` column, int8 split codes (N,). The pixel column is parsed with numpy over the raw
bytes, 512 rows at a time, so the full 35,887-row FER2013 file takes under 2 s of CPU; a
row the fast path rejects is then diagnosed on its own, so every error names its exact line
(header = line 1).
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fer_lightning.data.errors import DatasetError, DatasetNotFoundError
from fer_lightning.labels import EMOTIONS, FACE_SIZE

log = logging.getLogger(__name__)

NUM_PIXELS = FACE_SIZE * FACE_SIZE
# Split names used everywhere in the data layer, and the Usage values of the Kaggle files.
SPLITS: tuple[str, ...] = ("train", "val", "test")
USAGE_TO_SPLIT: dict[str, int] = {"training": 0, "publictest": 1, "privatetest": 2}
USAGE_NAMES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
ON_BAD_ROW = ("error", "skip")

_ROWS_PER_CHUNK = 512  # ~4 MB of text: the parser's temporaries stay small and in cache
_SCAN_BLOCK = 1 << 24  # bytes per block when locating newlines and commas
_MAX_LISTED_LINES = 20
# Largest CSV text accepted, plain or after gunzipping: FER2013 is 290 MB, so this leaves room
# for any real face CSV while a gzip bomb stops at the limit instead of exhausting memory.
MAX_CSV_BYTES = 2 << 30
_GZIP_CHUNK = 1 << 20
# Bytes at the start of a file checked for binary data before the rest is read.
_TEXT_CHECK_BYTES = 1 << 16
# Longest piece of a file quoted in an error message.
_EXCERPT_CHARS = 60


@dataclass(frozen=True)
class SizeLimit:
    """The most text a kind of file may hold, and what such a file really holds (for the
    message)."""

    max_bytes: int
    note: str


FACE_CSV_LIMIT = SizeLimit(MAX_CSV_BYTES, "a face CSV is far smaller (FER2013: 290 MB)")


def excerpt(text: str | bytes, limit: int = _EXCERPT_CHARS) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters."""
    if isinstance(text, bytes):
        text = text[: limit * 4].decode("utf-8", "replace")
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


@dataclass
class FaceTable:
    """The parsed content of one CSV.

    ``faces``: (N, 48, 48) uint8. ``labels``: (N,) int64 in 0..6. ``usage``: (N,) int8 index
    into :data:`SPLITS` (``Training`` -> 0, ``PublicTest`` -> 1, ``PrivateTest`` -> 2), or None
    when the file has no ``Usage`` column. ``skipped``: (line, reason) of rows dropped with
    ``on_bad_row="skip"``.
    """

    path: str
    faces: np.ndarray
    labels: np.ndarray
    usage: np.ndarray | None
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def read_bytes(path: Path, limit: SizeLimit | int = FACE_CSV_LIMIT) -> bytes:
    """The file's bytes, gunzipped when it is gzip data (recognised by content, not name).

    At most ``limit`` bytes of text, plain or expanded: gzip data is inflated in bounded chunks,
    so a small file that expands to gigabytes stops at the limit with a message, never with the
    machine's memory (``limit``: a :class:`SizeLimit`, or a byte count for a face CSV). The
    first 64 KB are checked for binary data before the rest is read, so a
    sparse or binary file (``truncate -s 1G``) is refused at once, without reading it."""
    if not path.exists():
        raise DatasetNotFoundError(f"{path}: no such file or folder.")
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder, expected a CSV file.")
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file (a pipe or device?); expected a CSV file.")
    if isinstance(limit, int):
        limit = SizeLimit(limit, FACE_CSV_LIMIT.note)
    with path.open("rb") as handle:
        magic = handle.read(2)
        handle.seek(0)
        if magic == b"\x1f\x8b":
            return _gunzip(path, handle, limit)
        if path.stat().st_size > limit.max_bytes:
            raise DatasetError(_too_large(path, limit, "is"))
        head = handle.read(_TEXT_CHECK_BYTES)
        _check_text(path, head)
        return head + handle.read()


def read_head(path: Path, size: int = _TEXT_CHECK_BYTES) -> bytes:
    """The first ``size`` bytes of the file's text (gunzipped when it is gzip data), without
    reading the rest: enough to recognise a file by its header."""
    with path.open("rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            handle.seek(0)
            return handle.read(size)
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read(size)
    except (OSError, EOFError, zlib.error):
        return b""


def _check_text(path: Path, head: bytes) -> None:
    """Refuse binary data (a NUL byte) in the first bytes of a file's text."""
    nul = head.find(b"\x00")
    if nul >= 0:
        raise DatasetError(
            f"{path}: not a text file (binary data at byte {nul}: a sparse, damaged or "
            "binary file?)."
        )


def _gunzip(path: Path, handle: BinaryIO, limit: SizeLimit) -> bytes:
    out = bytearray()
    checked = False

    def inflate(inflater: zlib._Decompress, data: bytes) -> None:
        nonlocal checked
        out.extend(inflater.decompress(data, _GZIP_CHUNK))
        if len(out) > limit.max_bytes:
            raise DatasetError(_too_large(path, limit, "expands to"))
        if not checked and len(out) >= _TEXT_CHECK_BYTES:
            _check_text(path, bytes(out[:_TEXT_CHECK_BYTES]))
            checked = True

    inflater, fresh = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16), True
    try:
        while True:
            data = inflater.unconsumed_tail or handle.read(_GZIP_CHUNK)
            if not data:
                break
            inflate(inflater, data)
            fresh = False
            # Concatenated gzip members (cat a.gz b.gz > c.gz) continue after the first.
            while inflater.eof:
                rest = inflater.unused_data
                inflater, fresh = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16), True
                if not rest:
                    break
                inflate(inflater, rest)
                fresh = False
        if not (inflater.eof or fresh):
            raise zlib.error("the file ends inside the compressed data (truncated?)")
    except zlib.error as err:
        raise DatasetError(f"{path}: not a readable gzip file ({err}).") from None
    if not checked:
        _check_text(path, bytes(out[:_TEXT_CHECK_BYTES]))
    return bytes(out)


def _too_large(path: Path, limit: SizeLimit, verb: str) -> str:
    return (
        f"{path}: {verb} more than {limit.max_bytes / 1e6:,.0f} MB of text; {limit.note}. Is it "
        "the right file?"
    )


@dataclass
class CsvColumns:
    """A CSV split into fields without copying its text: ``raw`` bytes, lower-cased header
    ``names``, per column the (start, end) byte offsets of every row's field (one pair of
    surrounding quotes and spaces stripped), each row's ``lines`` number (header = line 1) and
    ``bad``: row index -> reason for rows already found wrong (their fields are empty spans)."""

    path: Path
    raw: bytes
    names: list[str]
    spans: list[tuple[np.ndarray, np.ndarray]]
    lines: np.ndarray
    bad: dict[int, str]

    def __len__(self) -> int:
        return int(self.lines.size)

    def span(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        return self.spans[self.names.index(column)]

    def values(self, column: str) -> np.ndarray:
        """(N,) bytes: the column's fields (empty for bad rows)."""
        fs, fe = self.span(column)
        return np.array(
            [self.raw[s:e] for s, e in zip(fs.tolist(), fe.tolist(), strict=True)], dtype=bytes
        )


def read_columns(
    path: str | Path,
    what: str,
    check_header: Callable[[Path, list[str]], None],
    limit: SizeLimit = FACE_CSV_LIMIT,
) -> CsvColumns:
    """Split the CSV ``path`` (plain or gzip; BOM, CRLF and quotes accepted) into its columns.

    Whole-file problems raise :class:`DatasetError`: missing, empty, binary, a header that is not
    UTF-8, no data rows. ``what`` names the expected content for the empty-file message (e.g.
    ``a header emotion,pixels[,Usage]``); ``check_header(path, names)`` raises for a header
    without the columns the caller needs. Rows whose field count differs from the header's are
    listed in ``bad``; the caller parses the fields."""
    path = Path(path)
    raw = read_bytes(path, limit)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if re.search(rb"\S", raw) is None:
        raise DatasetError(f"{path}: the file is empty (expected {what}).")
    header_end = raw.find(b"\n")
    if header_end < 0:
        header_end = len(raw)
    names = _parse_header(path, raw[:header_end])
    check_header(path, names)
    buf = np.frombuffer(raw, dtype=np.uint8)
    starts, ends, line_numbers = _body_lines(buf, header_end)
    if starts.size == 0:
        raise DatasetError(f"{path}: has a header but no data rows.")
    bad: dict[int, str] = {}
    spans = _split_fields(buf, starts, ends, len(names), bad, names)
    return CsvColumns(path, raw, names, spans, line_numbers, bad)


def header_excerpt(names: list[str]) -> str:
    """The first header names, quoted, for a message."""
    return ", ".join(excerpt(n, 30) for n in names[:8]) + (", ..." if len(names) > 8 else "")


def read_face_csv(path: str | Path, on_bad_row: str = "error") -> FaceTable:
    """Parse and validate one FER-format CSV (plain or gzip; BOM, CRLF and quotes accepted).

    ``on_bad_row="error"`` raises :class:`DatasetError` for the first bad line;
    ``"skip"`` drops bad rows, logs how many and which lines, and lists them in
    ``FaceTable.skipped``. Problems with the file as a whole (missing, empty, not text, header
    without ``emotion``/``pixels``, no data rows) always raise.
    """
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, not {on_bad_row!r}.")
    table = read_columns(path, "a header emotion,pixels[,Usage]", _check_face_header)
    path = table.path
    raw, bad, rows = table.raw, table.bad, len(table)
    good = np.ones(rows, dtype=bool)
    good[list(bad)] = False

    labels = _parse_labels(raw, table.span("emotion"), good, bad)
    usage = parse_usage(raw, table.span("usage"), good, bad) if "usage" in table.names else None
    faces = np.empty((rows, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    _parse_pixels(raw, table.span("pixels"), good, bad, faces)

    if bad:
        problems = sorted((int(table.lines[i]), reason) for i, reason in bad.items())
        if on_bad_row == "error":
            raise_first(path, problems)
        keep = np.ones(rows, dtype=bool)
        keep[list(bad)] = False
        faces, labels = faces[keep], labels[keep]
        usage = usage[keep] if usage is not None else None
        listed = ", ".join(str(line) for line, _ in problems[:_MAX_LISTED_LINES])
        more = ", ..." if len(problems) > _MAX_LISTED_LINES else ""
        log.warning(
            "%s: skipped %d bad rows (on_bad_row=skip), lines %s%s; first: line %d: %s",
            path,
            len(problems),
            listed,
            more,
            problems[0][0],
            problems[0][1],
        )
        if labels.size == 0:
            raise DatasetError(f"{path}: every data row is bad (first: line {problems[0][0]}).")
        return FaceTable(str(path), faces, labels.astype(np.int64), usage, problems)
    return FaceTable(str(path), faces, labels.astype(np.int64), usage)


def _check_face_header(path: Path, names: list[str]) -> None:
    for required in ("emotion", "pixels"):
        if required not in names:
            raise DatasetError(
                f"{path}, line 1: missing column {required!r} (the header has "
                f"{header_excerpt(names)}; expected emotion,pixels[,Usage])."
            )


def raise_first(path: Path, problems: list[tuple[int, str]]) -> None:
    """Raise :class:`DatasetError` for the first of the sorted (line, reason) ``problems``."""
    line, reason = problems[0]
    extra = f" ({len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
    raise DatasetError(f"{path}, line {line}: {reason}{extra}.")


def _parse_header(path: Path, header: bytes) -> list[str]:
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}, line 1: not a text file (the header is not UTF-8).") from None
    return [name.strip().strip('"').strip().lower() for name in text.rstrip("\r").split(",")]


def _body_lines(buf: np.ndarray, header_end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start/end byte offsets of the non-blank lines after the header (end excludes CR/LF),
    and their 1-based line numbers."""
    newlines = _positions(buf, 10, header_end + 1)
    starts = np.concatenate(([header_end + 1], newlines + 1))
    ends = np.concatenate((newlines, [buf.size]))
    line_numbers = np.arange(2, starts.size + 2, dtype=np.int64)
    keep = starts < ends  # drops the empty piece after a final newline and blank lines
    starts, ends, line_numbers = starts[keep], ends[keep], line_numbers[keep]
    ends = ends - (buf[ends - 1] == 13)  # CRLF
    keep = starts < ends
    return starts[keep], ends[keep], line_numbers[keep]


def _positions(buf: np.ndarray, byte: int, start: int) -> np.ndarray:
    """Offsets of ``byte`` in ``buf[start:]``, scanned in blocks so that the temporary mask is
    16 MB, not the size of the file."""
    found = [
        np.flatnonzero(buf[lo : lo + _SCAN_BLOCK] == byte) + lo
        for lo in range(start, buf.size, _SCAN_BLOCK)
    ]
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def _split_fields(
    buf: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    ncols: int,
    bad: dict[int, str],
    columns: list[str],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, end) offsets of every column of every row; rows whose comma count does not match
    the header are recorded in ``bad`` (their offsets are left pointing at empty spans)."""
    commas = _positions(buf, 44, int(starts[0]))
    row_of_comma = np.searchsorted(starts, commas, side="right") - 1
    inside = commas < ends[row_of_comma]
    commas, row_of_comma = commas[inside], row_of_comma[inside]
    per_row = np.bincount(row_of_comma, minlength=starts.size)
    wrong = np.flatnonzero(per_row != ncols - 1)
    for row in wrong:
        bad[int(row)] = (
            f"expected {ncols} comma-separated columns ({','.join(columns)}), "
            f"found {int(per_row[row]) + 1}"
        )
    ok_rows = per_row == ncols - 1
    ok_commas = commas[ok_rows[row_of_comma]].reshape(-1, ncols - 1)
    fields = []
    for k in range(ncols):
        fs = np.array(starts, copy=True)
        fe = np.array(starts, copy=True)  # bad rows: empty span
        fs[ok_rows] = starts[ok_rows] if k == 0 else ok_commas[:, k - 1] + 1
        fe[ok_rows] = ends[ok_rows] if k == ncols - 1 else ok_commas[:, k]
        # Strip one pair of surrounding quotes (and the spaces around them) from every field.
        for _ in range(2):
            lead = (fs < fe) & np.isin(buf[np.minimum(fs, buf.size - 1)], (32, 34))
            fs = fs + lead
            trail = (fs < fe) & np.isin(buf[np.maximum(fe - 1, 0)], (32, 34))
            fe = fe - trail
        fields.append((fs, fe))
    return fields


def _parse_labels(
    raw: bytes, span: tuple[np.ndarray, np.ndarray], good: np.ndarray, bad: dict[int, str]
) -> np.ndarray:
    fs, fe = span
    labels = np.zeros(fs.size, dtype=np.int64)
    buf = np.frombuffer(raw, dtype=np.uint8)
    single = good & (fe - fs == 1)
    labels[single] = buf[fs[single]].astype(np.int64) - 48  # the usual case: one digit
    others = np.flatnonzero((good & ~single) | (single & ((labels < 0) | (labels > 6))))
    for row in others:
        text = raw[fs[row] : fe[row]].decode("utf-8", "replace").strip()
        if not text:
            bad[int(row)] = "missing emotion label"
            continue
        # ASCII digits only: int() would also take '３', '0_5' or '-0'.
        if re.fullmatch(r"-[0-9]{1,6}", text):
            bad[int(row)] = f"emotion label {text} is outside 0-{len(EMOTIONS) - 1}"
            continue
        if not re.fullmatch(r"[0-9]+", text):
            bad[int(row)] = f"emotion label {excerpt(text)} is not an integer"
            continue
        value = int(text)
        if not 0 <= value < len(EMOTIONS):
            bad[int(row)] = f"emotion label {value} is outside 0-{len(EMOTIONS) - 1}"
            continue
        labels[row] = value
    return labels


def parse_usage(
    raw: bytes, span: tuple[np.ndarray, np.ndarray], good: np.ndarray, bad: dict[int, str]
) -> np.ndarray:
    fs, fe = span
    usage = np.zeros(fs.size, dtype=np.int8)
    values = [raw[s:e] for s, e in zip(fs.tolist(), fe.tolist(), strict=True)]
    names, inverse = np.unique(np.array(values, dtype=bytes), return_inverse=True)
    for code, name in enumerate(names):
        text = name.decode("utf-8", "replace").strip()
        split = USAGE_TO_SPLIT.get(text.lower())
        rows = np.flatnonzero((inverse == code) & good)
        if split is None:
            shown = excerpt(text) if text else "empty"
            for row in rows:
                bad[int(row)] = f"unknown Usage value {shown} (expected {', '.join(USAGE_NAMES)})"
        else:
            usage[rows] = split
    return usage


def _parse_pixels(
    raw: bytes,
    span: tuple[np.ndarray, np.ndarray],
    good: np.ndarray,
    bad: dict[int, str],
    faces: np.ndarray,
) -> None:
    """Fill ``faces`` (N, 48, 48) from the pixel fields; rows the vectorised check rejects get a
    precise reason from :func:`_diagnose_pixels`."""
    fs, fe = span
    flat = faces.reshape(faces.shape[0], NUM_PIXELS)
    rows = np.flatnonzero(good)
    for lo in range(0, rows.size, _ROWS_PER_CHUNK):
        chunk = rows[lo : lo + _ROWS_PER_CHUNK]
        pieces = [raw[s:e] for s, e in zip(fs[chunk].tolist(), fe[chunk].tolist(), strict=True)]
        # Rows joined by a space, with a blank before the first and after the last, so that a
        # token always starts after a blank and looking 3 bytes past a token start is safe.
        text = np.frombuffer(b" " + b" ".join(pieces) + b"   ", dtype=np.uint8)
        row_start = np.concatenate(([1], 1 + np.cumsum([len(p) + 1 for p in pieces])[:-1]))
        digit = text - np.uint8(48)  # wraps around for non-digits
        is_digit = digit < 10
        token = np.flatnonzero(is_digit[1:] > is_digit[:-1]) + 1
        first = np.searchsorted(token, row_start)
        count = np.diff(np.append(first, token.size))
        # Value of each token of up to 3 digits; a 4th digit marks it as out of range.
        d1, d2, d3 = is_digit[token + 1], is_digit[token + 2], is_digit[token + 3]
        value = digit[token].astype(np.uint16)
        value = np.where(d1, value * 10 + digit[token + 1], value)
        value = np.where(d1 & d2, value * 10 + digit[token + 2], value)
        too_big = (value > 255) | (d1 & d2 & d3)
        reject = count != NUM_PIXELS
        # Only digits and spaces are allowed: count first, locate only when something is off.
        if np.count_nonzero(is_digit) + np.count_nonzero(text == 32) != text.size:
            odd_bytes = np.flatnonzero(~is_digit & (text != 32))
            reject[np.searchsorted(row_start, odd_bytes, side="right") - 1] = True
        if too_big.any():
            reject[np.searchsorted(first, np.flatnonzero(too_big), side="right") - 1] = True
        if not reject.any():
            flat[chunk] = value.reshape(-1, NUM_PIXELS)
            continue
        for i in np.flatnonzero(~reject):
            flat[chunk[i]] = value[first[i] : first[i] + NUM_PIXELS]
        for i in np.flatnonzero(reject):
            bad[int(chunk[i])] = _diagnose_pixels(pieces[i])


def _diagnose_pixels(piece: bytes) -> str:
    """The first thing wrong with one row's pixel field (the fast path rejected it)."""
    tokens = [tok for tok in re.split(r" +", piece.decode("utf-8", "replace")) if tok]
    if not tokens:
        return "the pixels field is empty"
    for index, tok in enumerate(tokens, start=1):
        if not re.fullmatch(r"-?[0-9]+", tok):
            return f"pixel {index} ({excerpt(tok, 20)}) is not an integer"
        digits = tok.lstrip("-")
        # Short numbers are quoted by value; a long run of digits only by an excerpt.
        if len(digits) <= 6 and not 0 <= int(tok) <= 255:
            return f"pixel {index} has value {int(tok)}, outside 0-255"
        if len(digits) > 3:
            return f"pixel {index} ({excerpt(tok, 20)}) has more than 3 digits"
    return f"{len(tokens)} pixel values, expected {NUM_PIXELS} ({FACE_SIZE}x{FACE_SIZE})"
