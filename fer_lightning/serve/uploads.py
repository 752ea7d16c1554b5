"""An uploaded image, from the request's bytes to a BGR array, in memory only.

The body is read chunk by chunk and refused as soon as it passes the size limit (or at once when
its declared length does), so a client cannot make the server buffer more than the limit. The
image is either the whole body (``image/*`` or ``application/octet-stream``) or the ``image``
field of a ``multipart/form-data`` form, parsed here from memory: form parsers that spool large
uploads to temporary files would write to disk. Pillow reads the image size from the header and
the pixel limit is checked before anything is decoded (decompression bombs: a 30000x30000 PNG
is a few kilobytes on disk and 2.7 GB decoded).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from fer_lightning.faces.images import ImageError, to_bgr

MEGABYTE = 1024 * 1024
# Formats decoded without helper programs (Pillow hands EPS to Ghostscript, for instance).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
RAW_CONTENT_TYPES = ("application/octet-stream",)
FORM_TYPE = "multipart/form-data"
FORM_FIELD = "image"
HOW_TO_SEND = (
    "send the image as the body (Content-Type: image/jpeg, image/png, ...) or as the field "
    f"'{FORM_FIELD}' of a multipart/form-data form (curl -F {FORM_FIELD}=@photo.jpg URL)"
)


class UploadError(Exception):
    """A request the server refuses: the HTTP ``status`` and a message saying what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _too_large(limit: int) -> UploadError:
    return UploadError(
        413,
        f"The request body is larger than the {limit / MEGABYTE:g} MB limit; send a "
        "smaller image (downscale it or use JPEG).",
    )


async def read_body(
    chunks: AsyncIterable[bytes], declared_length: str | None, max_bytes: int
) -> bytes:
    """The request body from ``chunks``; :class:`UploadError` 413 as soon as it is longer than
    ``max_bytes`` (before reading anything when ``declared_length`` already says so)."""
    if declared_length is not None:
        try:
            length = int(declared_length)
        except ValueError:
            raise UploadError(400, f"Content-Length {declared_length!r} is not a number.") from None
        if length > max_bytes:
            raise _too_large(max_bytes)
    body = bytearray()
    async for chunk in chunks:
        if len(body) + len(chunk) > max_bytes:
            raise _too_large(max_bytes)
        body += chunk
    return bytes(body)


def check_content_type(content_type: str | None) -> tuple[str, bytes | None]:
    """(media type, multipart boundary) of an accepted ``Content-Type``; 415 for the others.
    No ``Content-Type`` at all is taken as a raw image body."""
    media_type, options = parse_options_header(content_type)
    kind = media_type.decode("latin-1").lower()
    if kind and not kind.startswith("image/") and kind not in (*RAW_CONTENT_TYPES, FORM_TYPE):
        raise UploadError(415, f"Content-Type {kind!r} is not accepted: {HOW_TO_SEND}.")
    return kind, options.get(b"boundary")


def image_bytes(content_type: str | None, body: bytes) -> bytes:
    """The image file inside ``body``: the body itself, or the form field ``image``."""
    kind, boundary = check_content_type(content_type)
    if not body:
        raise UploadError(400, f"The request body is empty: {HOW_TO_SEND}.")
    return _form_field(body, boundary) if kind == FORM_TYPE else body


def _form_field(body: bytes, boundary: bytes | None) -> bytes:
    """The content of the form field ``image`` (the first one, if sent several times)."""
    if not boundary:
        raise UploadError(400, "The multipart/form-data Content-Type has no boundary.")
    parts: list[tuple[bytes, bytearray]] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}
    state = {"ended": False}

    def on_part_begin() -> None:
        parts.append((b"", bytearray()))

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if bytes(header["field"]).lower() == b"content-disposition":
            _, params = parse_options_header(bytes(header["value"]))
            parts[-1] = (params.get(b"name", b""), parts[-1][1])
        header["field"], header["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    def on_end() -> None:
        state["ended"] = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_end": on_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as error:
        raise UploadError(400, f"The multipart/form-data body is malformed ({error}).") from None
    if not state["ended"]:
        raise UploadError(400, "The multipart/form-data body ends before its closing boundary.")
    for name, data in parts:
        if name == FORM_FIELD.encode():
            if not data:
                raise UploadError(400, f"The form field '{FORM_FIELD}' is empty.")
            return bytes(data)
    names = ", ".join(repr(name.decode("latin-1")) for name, _ in parts) or "none"
    raise UploadError(
        422, f"The form has no field '{FORM_FIELD}' (fields: {names}): {HOW_TO_SEND}."
    )


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """The image file ``data`` as (H, W, 3) BGR uint8, EXIF orientation applied; refused with
    413 above ``max_pixels`` (read from the header, before decoding), 415 if it is not an image
    and 422 if it is damaged, truncated or too small for a face."""
    try:
        with warnings.catch_warnings():
            # The pixel limit is checked below with a clearer message than Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise UploadError(
                        413,
                        f"The image is {width}x{height} pixels ({width * height / 1e6:.1f} MP), "
                        f"more than the {max_pixels / 1e6:g} MP limit; downscale it first.",
                    )
                opened.load()
                return to_bgr(ImageOps.exif_transpose(opened), name="The image")
    except Image.DecompressionBombError:
        raise UploadError(413, "The image has too many pixels to decode safely.") from None
    except UnidentifiedImageError:
        formats = ", ".join(IMAGE_FORMATS)
        raise UploadError(
            415, f"The upload is not an image in a known format ({formats})."
        ) from None
    except ImageError as error:
        raise UploadError(422, str(error)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow raises OSError("image file is truncated ...") and friends for damaged files.
        raise UploadError(422, f"The image is damaged or truncated ({error}).") from None
