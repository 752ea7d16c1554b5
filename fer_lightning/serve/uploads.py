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
import math
import warnings
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from fer_lightning.faces.images import ImageError, to_bgr
from fer_lightning.serve.memory import PixelBudget

MEGABYTE = 1024 * 1024
# Formats decoded without helper programs (Pillow hands EPS to Ghostscript, for instance).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")
RAW_CONTENT_TYPES = ("application/octet-stream",)
FORM_TYPE = "multipart/form-data"
FORM_FIELD = "image"
# A browser's upload form has one part or a few; RFC 2046 allows boundaries of 1-70 characters.
MAX_FORM_PARTS = 16
MAX_PART_HEADER_BYTES = 4096
MAX_BOUNDARY_CHARS = 70
# Error messages name a few fields, each cut short: they never echo a whole request back.
SHOWN_NAMES = 5
SHOWN_NAME_CHARS = 40
SHOWN_ERROR_CHARS = 200
# Pillow modes Image.reduce takes as they are (others are converted to RGB(A) first).
REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")
# A reduced image keeps at least this many pixels on its shorter side.
MIN_REDUCED_SIDE = 64
EXIF_ORIENTATION = 0x0112
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


def _shown(name: bytes) -> str:
    """A form field's name for a message: decoded and cut short."""
    text = name.decode("latin-1")
    return repr(text if len(text) <= SHOWN_NAME_CHARS else text[:SHOWN_NAME_CHARS] + "...")


def _form_field(body: bytes, boundary: bytes | None) -> bytes:
    """The content of the form field ``image`` (the first one, if sent several times). The
    form may hold at most ``MAX_FORM_PARTS`` parts, each with at most ``MAX_PART_HEADER_BYTES``
    of headers: a browser's upload has one or a few, and a larger form is refused (400) as
    soon as the parser reaches the excess, before it is held in memory."""
    if not boundary:
        raise UploadError(400, "The multipart/form-data Content-Type has no boundary.")
    if len(boundary) > MAX_BOUNDARY_CHARS:
        raise UploadError(
            400,
            f"The multipart/form-data boundary is {len(boundary)} characters long; RFC 2046 "
            f"allows at most {MAX_BOUNDARY_CHARS}.",
        )
    parts: list[tuple[bytes, bytearray]] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}
    header_bytes = [0]
    state = {"ended": False}

    def on_part_begin() -> None:
        if len(parts) >= MAX_FORM_PARTS:
            raise UploadError(
                400,
                f"The form has more than {MAX_FORM_PARTS} parts; send only the field "
                f"'{FORM_FIELD}'.",
            )
        parts.append((b"", bytearray()))
        header_bytes[0] = 0

    def count_header(length: int) -> None:
        header_bytes[0] += length
        if header_bytes[0] > MAX_PART_HEADER_BYTES:
            raise UploadError(
                400,
                f"A form part's headers are longer than {MAX_PART_HEADER_BYTES} bytes (field "
                "names included); use short field names.",
            )

    def on_header_field(data: bytes, start: int, end: int) -> None:
        count_header(end - start)
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        count_header(end - start)
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if bytes(header["field"]).lower() == b"content-disposition":
            _, params = parse_options_header(bytes(header["value"]))
            parts[-1] = (params.get(b"name", b""), parts[-1][1])
        header["field"], header["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if parts[-1][0] == FORM_FIELD.encode():  # other fields' contents are not kept
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
    except (MultipartParseError, FormParserError) as error:
        raise UploadError(
            400, f"The multipart/form-data body is malformed ({str(error)[:SHOWN_ERROR_CHARS]})."
        ) from None
    if not state["ended"]:
        raise UploadError(400, "The multipart/form-data body ends before its closing boundary.")
    for name, data in parts:
        if name == FORM_FIELD.encode():
            if not data:
                raise UploadError(400, f"The form field '{FORM_FIELD}' is empty.")
            return bytes(data)
    names = ", ".join(_shown(name) for name, _ in parts[:SHOWN_NAMES]) or "none"
    if len(parts) > SHOWN_NAMES:
        names += f" and {len(parts) - SHOWN_NAMES} more"
    raise UploadError(
        422, f"The form has no field '{FORM_FIELD}' (fields: {names}): {HOW_TO_SEND}."
    )


@dataclass
class DecodedImage:
    """An upload decoded at a working size: ``image`` (BGR uint8, at most about
    ``working_pixels``), the oriented file's ``width`` x ``height``, and the pixels it holds
    in the budget until :meth:`release`."""

    image: np.ndarray
    width: int
    height: int
    budget: PixelBudget | None = None
    reserved: int = 0

    @property
    def scale(self) -> tuple[float, float]:
        """(x, y) factors from the working image's pixels to the file's."""
        work_height, work_width = self.image.shape[:2]
        return self.width / work_width, self.height / work_height

    def to_file_box(self, box: Sequence[int]) -> list[int]:
        """A box in the working image's pixels -> in the file's, within its bounds."""
        sx, sy = self.scale
        if (sx, sy) == (1.0, 1.0):
            return [int(v) for v in box]
        x0, y0, x1, y1 = box
        return [
            min(max(round(x0 * sx), 0), self.width),
            min(max(round(y0 * sy), 0), self.height),
            min(max(round(x1 * sx), 0), self.width),
            min(max(round(y1 * sy), 0), self.height),
        ]

    def release(self) -> None:
        if self.budget is not None and self.reserved:
            self.budget.release(self.reserved)
        self.reserved = 0


def _reduction(width: int, height: int, working_pixels: int) -> int:
    """The integer factor that brings width x height to at most ``working_pixels`` while
    keeping the shorter side at least ``MIN_REDUCED_SIDE`` (1: no reduction)."""
    factor = max(1, math.ceil(math.sqrt(width * height / working_pixels)))
    return max(1, min(factor, min(width, height) // MIN_REDUCED_SIDE))


def _reduced(image: Image.Image, working_pixels: int) -> Image.Image:
    factor = _reduction(*image.size, working_pixels)
    if factor == 1:
        return image
    if image.mode not in REDUCIBLE_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    return image.reduce(factor)


def decode_image(
    data: bytes,
    max_pixels: int,
    working_pixels: int | None = None,
    budget: PixelBudget | None = None,
) -> DecodedImage:
    """The image file ``data`` as BGR uint8, EXIF orientation applied, reduced by an integer
    factor to at most ``working_pixels`` (JPEG decodes at the reduced size directly; other
    formats are decoded, then reduced). Its decoded pixels are reserved in ``budget`` first
    (waiting while other requests hold it); once reduced only the working image's stay
    reserved, until :meth:`DecodedImage.release`. Refused with 413 above ``max_pixels`` (read
    from the header, before decoding), 415 if it is not an image and 422 if it is damaged,
    truncated or too small for a face."""
    reserved = 0
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
                if working_pixels is not None:
                    factor = _reduction(width, height, working_pixels)
                    if factor > 1:  # JPEG: decode at 1/2, 1/4 or 1/8 of the size
                        opened.draft(opened.mode, (width // factor, height // factor))
                if _swaps_sides(opened):
                    width, height = height, width
                if budget is not None:
                    reserved = budget.acquire(opened.size[0] * opened.size[1])
                opened.load()
                image = opened if working_pixels is None else _reduced(opened, working_pixels)
                if image is not opened:
                    opened.close()  # the full-size pixels go before the working copy is made
                ImageOps.exif_transpose(image, in_place=True)
                bgr = to_bgr(image, name="The image")
                image.close()
        kept = bgr.shape[0] * bgr.shape[1]
        if budget is not None and reserved > kept:
            budget.release(reserved - kept)
            reserved = kept
        decoded = DecodedImage(bgr, width, height, budget, reserved)
        reserved = 0
        return decoded
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
        message = str(error)[:SHOWN_ERROR_CHARS]
        raise UploadError(422, f"The image is damaged or truncated ({message}).") from None
    finally:
        if budget is not None and reserved:
            budget.release(reserved)


def _swaps_sides(image: Image.Image) -> bool:
    """Whether the file's EXIF orientation turns it by 90 degrees (width and height swap)."""
    try:
        return image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)
    except Exception:  # a damaged EXIF block is ignored, as exif_transpose does
        return False
