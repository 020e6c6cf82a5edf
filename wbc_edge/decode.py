"""Reading image files and bytes into the uint8 arrays that preprocessing takes.

Every image form a lab may produce is read: JPEG, PNG, BMP, TIFF; gray, RGB,
RGBA, palette, CMYK and 16-bit. A file that cannot be read is an error for that
file alone (:class:`ImageReadError`), never for the rest of a batch. Pillow's
decompression-bomb limit is enforced before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .preprocess import default_num_threads

#: What can be decoded: a path, encoded bytes, or a binary file object.
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, io.IOBase]

#: Pillow's decompression-bomb limit (about 89 megapixels).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS

# Modes whose pixels already are what preprocessing takes (gray, RGB, RGBA).
_DIRECT_MODES = {"L", "RGB", "RGBA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


class ImageReadError(Exception):
    """An input that could not be read as an image, and why."""

    def __init__(self, source, reason: str):
        self.source = describe_source(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


def describe_source(source) -> str:
    """A short name for an input, for messages and reports."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(source).__name__}>"


def decode_image(source: ImageSource, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decodes one image to a uint8 array: ``(h, w)`` gray, ``(h, w, 3)`` RGB or
    ``(h, w, 4)`` RGBA (the alpha is dropped later, by preprocessing).

    16-bit images are scaled to 8 bits (``round(v / 257)``); palette, CMYK and
    other colour spaces are converted to RGB; multi-frame files give their
    first frame.

    Raises:
        ImageReadError: naming the input and the reason (missing, unreadable,
            not an image, truncated or corrupt, larger than ``max_pixels``).
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            stream = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            if os.path.isdir(source):
                raise ImageReadError(source, "is a directory, not an image file")
            stream = source
        elif hasattr(source, "read"):
            stream = source
        else:
            raise ImageReadError(source, f"cannot read an image from a {type(source).__name__}")
        with Image.open(stream) as image:
            _check_size(source, image.size, max_pixels)
            image.load()
            return to_array(image)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(source, "file not found") from None
    except PermissionError:
        raise ImageReadError(source, "permission denied") from None
    except IsADirectoryError:
        raise ImageReadError(source, "is a directory, not an image file") from None
    except UnidentifiedImageError:
        raise ImageReadError(source, _not_an_image(source)) from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(source, f"rejected as a possible decompression bomb ({error})") from None
    except MemoryError:
        raise ImageReadError(source, "not enough memory to decode it") from None
    except Exception as error:  # Pillow's decoders raise OSError, ValueError, SyntaxError, ...
        raise ImageReadError(source, f"corrupt or truncated image ({error})") from None


def decode_images(
    sources: Iterable[ImageSource],
    *,
    num_threads: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> list[np.ndarray | ImageReadError]:
    """Decodes many inputs in a thread pool (Pillow releases the GIL while it
    decodes). Returns, in input order, an array or the :class:`ImageReadError`
    for each input; one bad input never stops the others."""
    sources = list(sources)
    workers = min(num_threads or default_num_threads(), max(1, len(sources)))
    if workers == 1:
        return [_decode_or_error(s, max_pixels) for s in sources]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wbc-decode") as pool:
        return list(pool.map(lambda s: _decode_or_error(s, max_pixels), sources))


def to_array(image: Image.Image) -> np.ndarray:
    """A decoded Pillow image as a uint8 array preprocessing accepts."""
    mode = image.mode
    if mode in _DIRECT_MODES:
        return np.asarray(image)
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if mode == "I":  # a 32-bit signed container of 16-bit samples
            values = np.clip(values, 0, 65535)
        values = values.astype(np.uint32)
        return ((values * 255 + 32767) // 65535).astype(np.uint8)
    if mode in ("1", "LA", "La", "F"):
        return np.asarray(image.convert("L"))
    if mode in ("RGBa", "RGBX", "PA"):
        return np.asarray(image.convert("RGBA" if mode != "RGBX" else "RGB"))
    # P (palette), CMYK, YCbCr, LAB, HSV, ...
    return np.asarray(image.convert("RGB"))


def _decode_or_error(source, max_pixels):
    try:
        return decode_image(source, max_pixels=max_pixels)
    except ImageReadError as error:
        return error


def _check_size(source, size, max_pixels):
    width, height = size
    if width < 1 or height < 1:
        raise ImageReadError(source, f"has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            source,
            f"is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,} (a decompression bomb?); pass a larger max_pixels if it is genuine",
        )


def _not_an_image(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "empty input" if len(source) == 0 else "not a recognized image format"
    if isinstance(source, (str, os.PathLike)) and os.path.getsize(source) == 0:
        return "empty file"
    return "not a recognized image format"
