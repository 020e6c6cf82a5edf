"""What callers hand to ``predict``: one decoded image, or the reason there
is none, per input.

An input is a file path, encoded bytes, a binary file object, a PIL image or
a uint8 array; a batch is a sequence of them or one stacked ``(n, h, w, c)``
uint8 array. Encoded inputs are decoded in a thread pool
(:func:`wbc_edge.decode.decode_images`); an input that cannot be an image
gets its reason and never stops the others.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .decode import ImageReadError, decode_images, describe_source, to_array

#: inputs that are decoded (the others are images already)
ENCODED = (str, os.PathLike, bytes, bytearray, memoryview, io.IOBase)


@dataclass
class DecodedInputs:
    """A group of inputs: per input its name, and its image or its error."""

    names: list[str | None]
    images: list[np.ndarray | None]
    errors: list[str | None]


def decode_inputs(items: Sequence, *, num_threads: int, max_pixels: int | None,
                  reduce_to: tuple[int, int] | None = None) -> DecodedInputs:
    """Each input as an image (encoded ones decoded in ``num_threads``
    threads, at least ``reduce_to`` in size), or the reason it is none."""
    count = len(items)
    decoded = DecodedInputs(names=[name_of(item) for item in items], images=[None] * count, errors=[None] * count)
    encoded = [i for i, item in enumerate(items) if isinstance(item, ENCODED)]
    results = decode_images([items[i] for i in encoded], num_threads=num_threads, max_pixels=max_pixels,
                            reduce_to=reduce_to)
    for i, result in zip(encoded, results):
        if isinstance(result, ImageReadError):
            decoded.errors[i] = result.reason
        else:
            decoded.images[i] = result
    for i, item in enumerate(items):
        if not isinstance(item, ENCODED):
            decoded.images[i], decoded.errors[i] = image_of(item, max_pixels)
    return decoded


def is_stack(images) -> bool:
    return isinstance(images, np.ndarray) and images.ndim == 4


def check_stack(stack: np.ndarray) -> None:
    if stack.dtype != np.uint8:
        raise TypeError(f"a stacked batch must be uint8 (n, h, w, 3), got dtype {stack.dtype}")
    _n, h, w, c = stack.shape
    if c not in (1, 3, 4) or h < 1 or w < 1:
        raise ValueError(f"a stacked batch must have shape (n, h, w, 3) (or 1/4 channels), got {stack.shape}")


def as_sequence(images, what: str) -> list:
    if isinstance(images, (*ENCODED, Image.Image)):
        raise TypeError(f"{what} takes a list of images; for one image use predict()")
    if isinstance(images, np.ndarray):
        raise TypeError(f"{what}: got one array of shape {images.shape}; pass a list of images or one "
                        "stacked (n, h, w, 3) array; for one image use predict()")
    if not hasattr(images, "__iter__"):
        raise TypeError(f"{what} takes a list of images, got {type(images).__name__}")
    return list(images)


def name_of(item) -> str | None:
    """The input's path or name where it has one."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, io.IOBase):
        name = getattr(item, "name", None)
        return name if isinstance(name, str) else None
    if isinstance(item, Image.Image):
        return getattr(item, "filename", None) or None
    return None


def image_of(item, max_pixels: int | None) -> tuple[np.ndarray | None, str | None]:
    """An in-memory input (array or PIL image) as an array preprocessing
    takes, or the reason it cannot be one."""
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            return None, f"expected a uint8 image array, got dtype {item.dtype}"
        shape = item.shape
        if not (item.ndim == 2 or (item.ndim == 3 and shape[2] in (1, 3, 4))):
            return None, f"expected an image array (h, w) or (h, w, 1|3|4), got shape {shape}"
        if shape[0] < 1 or shape[1] < 1:
            return None, f"has no pixels (shape {shape})"
        return item, None
    if isinstance(item, Image.Image):
        width, height = item.size
        if width < 1 or height < 1:
            return None, f"has no pixels ({width}x{height})"
        if max_pixels is not None and width * height > max_pixels:
            return None, f"is {width}x{height} pixels, more than the limit of {max_pixels:,}"
        try:
            return to_array(item), None
        except Exception as error:  # a lazily loaded, truncated file surfaces here
            return None, f"corrupt or truncated image ({error})"
    if item is None:
        return None, "no image (None)"
    return None, (f"cannot classify an object of type {type(item).__name__}: pass a path, bytes, a file object, "
                  f"a PIL image or a uint8 array ({describe_source(item)})")
