"""Reading and normalising images: whatever the user has -> (H, W, 3) BGR uint8.

Files are decoded with Pillow, which (unlike ``cv2.imread``) refuses truncated files instead of
returning a half-grey image, knows the size before decoding (so huge files are refused without
allocating them) and applies the EXIF orientation of phone photos.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
)
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})

# A face needs more pixels than this per side to be recognisable at all.
MIN_IMAGE_SIDE = 16
# 100 megapixels is 300 MB decoded: larger files are refused rather than risking memory.
MAX_IMAGE_PIXELS = 100_000_000


class ImageError(ValueError):
    """An input that is not a usable image; the message names the file and the problem."""


def read_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The image file ``path`` as (H, W, 3) BGR uint8. Raises :class:`ImageError`."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file.")
    try:
        with warnings.catch_warnings():
            # The pixel limit is checked below, with a clearer message than Pillow's.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageError(_too_big(path, width, height, max_pixels))
                opened.load()
                image = ImageOps.exif_transpose(opened)
                return to_bgr(image, name=str(path))
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(
            f"{path}: too large to decode safely ({error}); downscale it first."
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (unknown or unsupported format).") from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow raises OSError("image file is truncated ...") and friends for damaged files.
        raise ImageError(f"{path}: unreadable or damaged image ({error}).") from None


def _too_big(path: Path, width: int, height: int, max_pixels: int) -> str:
    return (
        f"{path}: {width}x{height} pixels ({width * height / 1e6:.0f} MP) is more than the "
        f"{max_pixels / 1e6:.0f} MP limit; downscale it first."
    )


def to_bgr(image: object, name: str = "image") -> np.ndarray:
    """A PIL image or numpy array -> contiguous (H, W, 3) BGR uint8.

    Numpy arrays are taken as OpenCV lays them out: (H, W) grayscale, (H, W, 3) BGR or
    (H, W, 4) BGRA; uint8, uint16 (scaled by 1/257) or float in [0, 1]. Alpha is dropped.
    PIL images of any mode are converted from their own colour space.
    """
    if isinstance(image, Image.Image):
        array = _pil_to_bgr(image)
    elif isinstance(image, np.ndarray):
        array = _array_to_bgr(image, name)
    else:
        raise ImageError(f"{name}: expected a path, numpy array or PIL image, got {type(image)}.")
    height, width = array.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageError(
            f"{name}: {width}x{height} pixels is too small to hold a face "
            f"(at least {MIN_IMAGE_SIDE} px per side)."
        )
    return np.ascontiguousarray(array)


def _pil_to_bgr(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale (PNG, TIFF): map 0..65535 to 0..255.
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(values / 257.0 + 0.5, 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        gray = np.clip(values * (255.0 if values.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    rgb = np.asarray(image.convert("RGB"))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _array_to_bgr(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: expected (H, W), (H, W, 3) or (H, W, 4), got {array.shape}.")
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif array.dtype in (np.float32, np.float64):
        array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported pixel type {array.dtype}.")
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    return array


def load_image(image: object, name: str | None = None) -> np.ndarray:
    """A path, numpy array or PIL image -> (H, W, 3) BGR uint8. Raises :class:`ImageError`."""
    if isinstance(image, str | Path):
        return read_image(image)
    return to_bgr(image, name=name or "image")
