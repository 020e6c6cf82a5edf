"""Reading image files and bytes into the uint8 arrays that preprocessing takes.

Every image form a lab may produce is read: JPEG, PNG, BMP, TIFF; gray, RGB,
RGBA, palette, CMYK and 16-bit; float TIFFs with values in [0, 1]. A file that
cannot be read is an error for that file alone (:class:`ImageReadError`), never
for the rest of a batch. Pillow's decompression-bomb limit is enforced before
any pixel is decoded.

Hostile inputs: only regular files are opened (a FIFO, a device, a socket is
reported, never read: opening one could wait forever), and opened
non-blocking; Pillow is restricted to the four supported formats
(:data:`FORMATS`), so an EPS file is never handed to Ghostscript and WEBP or
JPEG 2000 are reported as unsupported; 32-bit integer and out-of-range float
pixels are refused rather than guessed. Images over :data:`LARGE_PIXELS` are
decoded one at a time (process-wide), which bounds the memory a batch of huge
images takes while it is decoded; with ``reduce_to`` a huge image is reduced
(JPEG: in the DCT, others: by an integer box filter) to no less than
:data:`REDUCE_MARGIN` times that size before it is kept.

JPEG goes through ``simplejpeg`` (libjpeg-turbo, the GIL released while it
decodes), which gives the same pixels as Pillow for gray, YCbCr and RGB JPEGs,
and strictly: libjpeg's corrupt-data warnings (``Corrupt JPEG data: ...
extraneous bytes before marker``, ``Premature end of JPEG file``), which Pillow
lets pass, make the file an input error carrying libjpeg's message. CMYK and
YCCK JPEGs are checked the same way and converted by Pillow; a JPEG whose
header TurboJPEG cannot read (unusual sampling factors), and every other
format, are decoded by Pillow alone. Ordinary cells are decoded at full size:
scaling in the DCT to the model input would change the preprocessed pixels
(README, "CPU engines and decode").
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .files import describe_kind
from .installed import installed
from .preprocess import default_num_threads

#: What can be decoded: a path, encoded bytes, or a binary file object.
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, io.IOBase]

#: Pillow's decompression-bomb limit (about 89 megapixels).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS
#: The formats Pillow may decode (its format ids); anything else is unsupported.
FORMATS = ("JPEG", "PNG", "BMP", "TIFF")
#: Images with more pixels than this are decoded one at a time, process-wide.
LARGE_PIXELS = 16_000_000
#: With ``reduce_to``, an image is reduced only while both sides stay at least
#: this many times the target's (and only when it has over REDUCE_ABOVE pixels).
REDUCE_MARGIN = 8
REDUCE_ABOVE = 4_000_000
_large_decodes = threading.BoundedSemaphore(1)
#: Whether JPEG is decoded by simplejpeg (a runtime dependency; Pillow alone without it).
USE_SIMPLEJPEG = installed("simplejpeg")
_JPEG_SOI = b"\xff\xd8\xff"
# simplejpeg's header colour spaces it decodes to the pixels Pillow gives
_SIMPLEJPEG_COLORSPACES = {"Gray": "GRAY", "YCbCr": "RGB", "RGB": "RGB"}

# Recognized by their first bytes, to say what an unsupported file is.
_SIGNATURES = (
    (b"RIFF", 8, b"WEBP", "a WEBP image"),
    (b"\x00\x00\x00\x0cjP  ", 0, b"", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", 0, b"", "a JPEG 2000 codestream"),
    (b"%!PS", 0, b"", "a PostScript/EPS file"),
    (b"\xc5\xd0\xd3\xc6", 0, b"", "an EPS file"),
    (b"GIF8", 0, b"", "a GIF image"),
    (b"%PDF", 0, b"", "a PDF document"),
    (b"\x00\x00\x01\x00", 0, b"", "an ICO icon"),
    (b"8BPS", 0, b"", "a Photoshop file"),
    (b"qoif", 0, b"", "a QOI image"),
)

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


def decode_image(source: ImageSource, *, max_pixels: int | None = MAX_PIXELS,
                 reduce_to: tuple[int, int] | None = None) -> np.ndarray:
    """Decodes one image to a uint8 array: ``(h, w)`` gray, ``(h, w, 3)`` RGB or
    ``(h, w, 4)`` RGBA (the alpha is dropped later, by preprocessing).

    16-bit images are scaled to 8 bits (``round(v / 257)``), float images
    with values in [0, 1] to 0..255; palette, CMYK and other colour spaces are
    converted to RGB; multi-frame files give their first frame. ``reduce_to``
    (the ``(H, W)`` the image will be resized to) lets an image of over
    :data:`REDUCE_ABOVE` pixels be reduced first, keeping both sides at least
    :data:`REDUCE_MARGIN` times the target's.

    Raises:
        ImageReadError: naming the input and the reason (missing, not a
            regular file, unreadable, not an image, an unsupported format,
            truncated or corrupt, larger than ``max_pixels``).
    """
    opened = None
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            stream = io.BytesIO(source)
        elif isinstance(source, (str, os.PathLike)):
            stream = opened = open_regular_file(source)
        elif hasattr(source, "read"):
            stream = source
        else:
            raise ImageReadError(source, f"cannot read an image from a {type(source).__name__}")
        data = _jpeg_data(source, stream) if USE_SIMPLEJPEG else None
        if data is not None:
            pixels = _decode_jpeg(source, data, max_pixels, reduce_to)
            if pixels is not None:
                return pixels
            stream = io.BytesIO(data)  # Pillow's turn (CMYK, or a header TurboJPEG cannot read)
        with Image.open(stream, formats=FORMATS) as image:
            _check_size(source, image.size, max_pixels)
            pixels = image.size[0] * image.size[1]
            if pixels > LARGE_PIXELS:
                with _large_decodes:
                    return _load(image, reduce_to, source)
            return _load(image, reduce_to, source)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(source, "file not found") from None
    except PermissionError:
        raise ImageReadError(source, "permission denied") from None
    except IsADirectoryError:
        raise ImageReadError(source, "is a directory, not an image file") from None
    except UnidentifiedImageError:
        raise ImageReadError(source, _not_an_image(source, stream)) from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(source, f"rejected as a possible decompression bomb ({error}); Pillow refuses "
                                     f"images over {2 * Image.MAX_IMAGE_PIXELS:,} pixels whatever --max-pixels "
                                     "(or Classifier.load(max_pixels=N)) says") from None
    except MemoryError:
        raise ImageReadError(source, "not enough memory to decode it") from None
    except OSError as error:
        if error.errno is not None and error.filename is not None:  # the OS's, not a decoder's
            raise ImageReadError(source, _os_reason(error)) from None
        raise ImageReadError(source, f"corrupt or truncated image ({error})") from None
    except Exception as error:  # Pillow's decoders raise OSError, ValueError, SyntaxError, ...
        raise ImageReadError(source, f"corrupt or truncated image ({error})") from None
    finally:
        if opened is not None:
            opened.close()


def open_regular_file(path: str | os.PathLike) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file (links followed);
    else :class:`ImageReadError` saying what it is. Opened non-blocking, so
    a FIFO put in its place after the check cannot hang the read either."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise ImageReadError(path, _os_reason(error)) from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(path, f"is {describe_kind(info.st_mode)}, not an image file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise ImageReadError(path, _os_reason(error)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageReadError(path, f"is {describe_kind(info.st_mode)}, not an image file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise




def _jpeg_data(source, stream) -> bytes | bytearray | memoryview | None:
    """The whole input when it starts as a JPEG does; else None, with
    ``stream`` where it was (rewound after the peek)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return source if bytes(source[:3]) == _JPEG_SOI else None
    seekable = getattr(stream, "seekable", None)
    if seekable is None or not seekable():
        return None
    start = stream.tell()
    head = stream.read(3)
    if head != _JPEG_SOI:
        stream.seek(start)
        return None
    return head + stream.read()


def _decode_jpeg(source, data, max_pixels: int | None, reduce_to: tuple[int, int] | None) -> np.ndarray | None:
    """A JPEG decoded by simplejpeg, strictly; None where Pillow decodes it
    instead (after the strict check, for CMYK and YCCK)."""
    import simplejpeg

    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # Pillow reads some headers TurboJPEG's cannot (and reports the rest)
    _check_size(source, (width, height), max_pixels)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > 2 * limit:  # as Image.open refuses, whatever max_pixels
        raise Image.DecompressionBombError(f"Image size ({width * height} pixels) exceeds limit of {2 * limit} "
                                           "pixels, could be decompression bomb DOS attack.")
    output = _SIMPLEJPEG_COLORSPACES.get(colorspace, "CMYK")
    scale = {}
    factor = _reduction((width, height), reduce_to)
    if factor > 1:  # the DCT scale Pillow's draft takes (1/2, 1/4, 1/8), so the pixels are the same
        fits = min(width // (width // factor), height // (height // factor))
        step = next(s for s in (8, 4, 2, 1) if fits >= s)
        scale = {"min_height": -(-height // step), "min_width": -(-width // step)}
    with _large_decodes if width * height > LARGE_PIXELS else nullcontext():
        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace=output, strict=True, **scale)
        except ValueError as error:
            raise ImageReadError(source, f"corrupt or truncated image (libjpeg: {error})") from None
        if output == "CMYK":
            return None
        if output == "GRAY":
            pixels = pixels.reshape(pixels.shape[:2])
        factor = _reduction((pixels.shape[1], pixels.shape[0]), reduce_to)
        if factor > 1:
            pixels = np.asarray(Image.fromarray(pixels).reduce(factor))
        return pixels


def _os_reason(error: OSError) -> str:
    """What the operating system said, in words that do not mislead."""
    code = error.errno
    if code == errno.ENOENT:
        return "file not found" if not os.path.islink(error.filename or "") else \
            "broken symbolic link (its target does not exist)"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ELOOP:
        return "symbolic link loop (too many levels of links)"
    if code == errno.EISDIR:
        return "is a directory, not an image file"
    if code == errno.ENAMETOOLONG:
        return "file name too long"
    if code == errno.ENOTDIR:
        return "a part of the path is not a folder"
    if code == errno.EIO:
        return "input/output error while reading (failing disk or network share?)"
    return f"cannot be opened ({error.strerror or error})"


def _load(image: Image.Image, reduce_to: tuple[int, int] | None, source) -> np.ndarray:
    """Decodes an opened image (reduced first where ``reduce_to`` allows) to an array."""
    factor = _reduction(image.size, reduce_to)
    if factor > 1 and image.format == "JPEG":
        width, height = image.size
        image.draft(image.mode, (width // factor, height // factor))  # scales in the DCT: 1/2, 1/4, 1/8
        factor = _reduction(image.size, reduce_to)
    if image.mode == "I" and _tiff_bits(image) == 32:
        return to_array(image, source)  # refused before any pixel is decoded
    image.load()
    if factor > 1:
        if image.mode not in ("L", "RGB", "RGBA", "CMYK", "I", "F", "I;16"):
            image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        image = image.reduce(factor)
    return to_array(image, source)


def _reduction(size: tuple[int, int], reduce_to: tuple[int, int] | None) -> int:
    """The integer factor a ``size`` (W, H) image may be reduced by."""
    width, height = size
    if reduce_to is None or width * height <= REDUCE_ABOVE:
        return 1
    target_h, target_w = reduce_to
    return max(1, min(width // (REDUCE_MARGIN * max(1, target_w)), height // (REDUCE_MARGIN * max(1, target_h))))


def decode_images(
    sources: Iterable[ImageSource],
    *,
    num_threads: int | None = None,
    max_pixels: int | None = MAX_PIXELS,
    reduce_to: tuple[int, int] | None = None,
) -> list[np.ndarray | ImageReadError]:
    """Decodes many inputs in a thread pool (simplejpeg and Pillow release
    the GIL while they decode). Returns, in input order, an array or the :class:`ImageReadError`
    for each input; one bad input never stops the others."""
    sources = list(sources)
    workers = min(num_threads or default_num_threads(), max(1, len(sources)))
    if workers == 1:
        return [_decode_or_error(s, max_pixels, reduce_to) for s in sources]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wbc-decode") as pool:
        return list(pool.map(lambda s: _decode_or_error(s, max_pixels, reduce_to), sources))


def to_array(image: Image.Image, source=None) -> np.ndarray:
    """A decoded Pillow image as a uint8 array preprocessing accepts.

    Raises:
        ImageReadError: pixels with no agreed meaning as 8-bit intensities:
            32-bit integer TIFF samples, float pixels outside [0, 1] or not
            finite.
    """
    mode = image.mode
    if mode in _DIRECT_MODES:
        return np.asarray(image)
    if mode == "I" and _tiff_bits(image) == 32:
        raise ImageReadError(source if source is not None else image,
                             "32-bit integer pixels: no agreed range to scale to 8 bits; save the image "
                             "with 8 or 16 bits per sample")
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if mode == "I":  # a 32-bit signed container of 16-bit samples
            values = np.clip(values, 0, 65535)
        values = values.astype(np.uint32)
        return ((values * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "F":
        return _float_to_uint8(np.asarray(image), source if source is not None else image)
    if mode in ("1", "LA", "La"):
        return np.asarray(image.convert("L"))
    if mode in ("RGBa", "RGBX", "PA"):
        return np.asarray(image.convert("RGBA" if mode != "RGBX" else "RGB"))
    # P (palette), CMYK, YCbCr, LAB, HSV, ...
    return np.asarray(image.convert("RGB"))


def _tiff_bits(image: Image.Image) -> int | None:
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return bits if isinstance(bits, int) else None


def _float_to_uint8(values: np.ndarray, source) -> np.ndarray:
    """Float intensities in [0, 1] as 0..255 (rounded); others refused."""
    finite = np.isfinite(values)
    if not finite.all():
        raise ImageReadError(source, f"floating-point pixels that are not finite (NaN or infinity in "
                                     f"{int((~finite).sum()):,} pixels)")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ImageReadError(source, f"floating-point pixels from {low:g} to {high:g}: only values in [0, 1] "
                                     "can be read as intensities; save the image as 8 or 16 bits")
    return np.rint(values * 255.0).astype(np.uint8)


def _decode_or_error(source, max_pixels, reduce_to=None):
    try:
        return decode_image(source, max_pixels=max_pixels, reduce_to=reduce_to)
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
            f"{max_pixels:,} (a decompression bomb?); if it is genuine, raise the limit "
            "(classify --max-pixels N, or Classifier.load(max_pixels=N))",
        )


def _not_an_image(source, stream=None) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            return "empty input"
        head = bytes(source[:16])
    else:
        head = b""
        try:
            if isinstance(source, (str, os.PathLike)) and stream is not None and os.fstat(stream.fileno()).st_size == 0:
                return "empty file"
            if stream is not None and hasattr(stream, "seek"):
                stream.seek(0)
                head = stream.read(16)
        except (OSError, ValueError):
            pass
    for magic, offset, more, name in _SIGNATURES:
        if head.startswith(magic) and (not more or head[offset:offset + len(more)] == more):
            return f"{name}: not a supported format ({', '.join(FORMATS)} only)"
    return "not a recognized image format"
