"""Batch preprocessing: cell images of any size and form -> one model-ready batch.

This is the single preprocessing used by training, calibration and inference
(calibrating INT8 on differently preprocessed images silently ruins it). The
work is done by the C++ extension ``wbc_edge._preprocess``; this module picks
defaults, allocates the output and builds the normalization table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from . import _preprocess

#: How an image becomes H x W. ``stretch`` resizes the whole image (cell crops
#: are centred and nearly square); ``center_crop`` first cuts the largest
#: centred region with the output's aspect ratio; ``cell_center`` finds the
#: white cell by its nucleus stain and cuts a field around it whose size
#: follows the cell's (docs/PREPROCESSING.md), so that crops from labs with
#: other magnifications and framing reach the model alike. Where it finds no
#: white cell it falls back to ``center_crop`` and says so (``boxes``).
RESIZE_POLICIES = ("stretch", "center_crop", "cell_center")

#: ImageNet statistics, the default normalization of float outputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_OUTPUT_DTYPES = {np.dtype(np.uint8), np.dtype(np.float32), np.dtype(np.float16)}


def default_num_threads() -> int:
    """The number of CPUs this process may run on (its affinity, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def normalization_table(mean: Sequence[float], std: Sequence[float], dtype=np.float32) -> np.ndarray:
    """The (3, 256) table of ``(v / 255 - mean[c]) / std[c]`` for every byte value v.

    Computed in float32 exactly as ``(x.astype(float32) / 255 - mean) / std``,
    then cast, so the C++ output equals that numpy expression bit for bit.
    """
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1)
    if mean.size != 3 or std.size != 3:
        raise ValueError("mean and std need one value per channel (3 each)")
    if not np.all(std > 0):
        raise ValueError(f"std must be positive, got {std.ravel().tolist()}")
    values = np.arange(256, dtype=np.float32).reshape(1, 256) / np.float32(255.0)
    return np.ascontiguousarray(((values - mean) / std).astype(dtype))


def preprocess_batch(
    images,
    size: tuple[int, int] = (128, 128),
    out: np.ndarray | None = None,
    num_threads: int | None = None,
    *,
    dtype=np.uint8,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    policy: str = "stretch",
    boxes: np.ndarray | None = None,
) -> np.ndarray:
    """Resizes a batch of uint8 images to one ``size = (H, W)`` batch.

    Args:
        images: a sequence of uint8 arrays, each ``(h, w)``, ``(h, w, 1)``,
            ``(h, w, 3)`` or ``(h, w, 4)`` (any size from 1x1, any strides), or
            one stacked ``(n, h, w, c)`` array. Gray is replicated to RGB and
            alpha is dropped.
        size: the output ``(H, W)``.
        out: optional preallocated, C-contiguous, writable output (for example
            a pinned host buffer) of the shape and dtype described below.
        num_threads: worker threads; default: every CPU this process may use.
            The output is identical whatever the thread count.
        dtype: ``uint8`` (default) gives ``(n, H, W, 3)`` RGB, what the
            exported models take. ``float32`` or ``float16`` give normalized
            ``(n, 3, H, W)`` tensors, ``(x / 255 - mean) / std``.
        mean, std: per-channel normalization of float outputs.
        policy: ``"stretch"`` (default), ``"center_crop"`` or
            ``"cell_center"``, see :data:`RESIZE_POLICIES`.
        boxes: optional float32 ``(n, 5)`` array that receives, per image,
            the source region resampled (``x0, y0, x1, y1`` in pixels) and
            1.0 where the policy found what it looks for (always, but for
            ``cell_center`` on an image with no white cell: 0.0).

    Resampling is antialiased bilinear, bit-exact with Pillow's
    ``Image.resize((W, H), Image.BILINEAR)``.

    Raises:
        TypeError, ValueError: naming the offending image index, or ``out``,
        and the problem.
    """
    height, width = _check_size(size)
    dtype = np.dtype(dtype)
    if dtype not in _OUTPUT_DTYPES:
        raise TypeError(f"dtype must be uint8, float32 or float16, got {dtype}")
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    if num_threads is None:
        num_threads = default_num_threads()
    elif not isinstance(num_threads, (int, np.integer)) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")

    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(
                f"a stacked batch must have shape (n, h, w, c), got {images.shape}; "
                "wrap a single image in a list"
            )
    elif isinstance(images, (str, bytes)) or not hasattr(images, "__iter__"):
        raise TypeError(
            "images must be a sequence of numpy uint8 arrays or one (n, h, w, c) array, "
            f"got {type(images).__name__}"
        )
    elif not hasattr(images, "__len__"):
        images = list(images)  # a generator or other one-pass iterable
    count = len(images)
    lut = None
    if dtype == np.uint8:
        shape = (count, height, width, 3)
    else:
        shape = (count, 3, height, width)
        lut = normalization_table(mean, std, dtype)
    if out is None:
        out = np.empty(shape, dtype=dtype)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out: expected a numpy array, got {type(out).__name__}")
        if out.dtype != dtype:
            raise TypeError(f"out: dtype is {out.dtype}, expected {dtype}")
        if out.shape != shape:
            raise ValueError(f"out: shape is {out.shape}, expected {shape}")
    if boxes is not None and (not isinstance(boxes, np.ndarray) or boxes.dtype != np.float32
                              or boxes.shape != (count, 5)):
        raise ValueError(f"boxes: expected a float32 array of shape ({count}, 5), got "
                         f"{getattr(boxes, 'dtype', type(boxes).__name__)} {getattr(boxes, 'shape', '')}")
    _preprocess.preprocess(images, out, lut, policy, int(num_threads), boxes)
    return out


def _check_size(size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be at least (1, 1), got {size!r}")
    return height, width
