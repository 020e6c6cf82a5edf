"""A plain Python/numpy reference of antialiased bilinear resizing, written from
Pillow's algorithm (src/libImaging/Resample.c) to check the C++ extension
against something other than itself. Slow; for tests only."""

from __future__ import annotations

import numpy as np

PRECISION_BITS = 22


def taps(in_size: int, in0: float, in1: float, out_size: int) -> list[tuple[int, list[int]]]:
    """For each output index: (first source index, fixed-point weights)."""
    # Pillow keeps the box in C floats: the subtraction happens in float32.
    scale = float(np.float32(in1) - np.float32(in0)) / out_size
    in0 = float(np.float32(in0))
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    result = []
    for xx in range(out_size):
        center = in0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) / filterscale)) for x in range(xmax)]
        total = sum(weights)
        if total:
            weights = [w / total for w in weights]
        fixed = [int(-0.5 + w * (1 << PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << PRECISION_BITS))
                 for w in weights]
        result.append((xmin, fixed))
    return result


def _pass(src: np.ndarray, axis_taps, axis: int) -> np.ndarray:
    """Resamples ``src`` (int arrays, rows x cols x 3) along ``axis``."""
    src = np.moveaxis(src.astype(np.int64), axis, 0)
    out = np.empty((len(axis_taps), *src.shape[1:]), dtype=np.uint8)
    for i, (first, weights) in enumerate(axis_taps):
        acc = np.full(src.shape[1:], 1 << (PRECISION_BITS - 1), dtype=np.int64)
        for t, w in enumerate(weights):
            acc += src[first + t] * w
        out[i] = np.clip(acc >> PRECISION_BITS, 0, 255)
    return np.moveaxis(out, 0, axis)


def resize_reference(image: np.ndarray, out_h: int, out_w: int, box=None) -> np.ndarray:
    """uint8 (h, w) or (h, w, c) -> (out_h, out_w, 3): gray replicated, alpha
    dropped, then Pillow's two passes with an 8-bit image in between."""
    if image.ndim == 2:
        image = image[:, :, None]
    image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box if box is not None else (0, 0, w, h)
    vtaps = taps(h, y0, y1, out_h)
    first_row = vtaps[0][0]
    last_row = vtaps[-1][0] + len(vtaps[-1][1])
    need_h = out_w != w or x0 != 0 or x1 != out_w
    need_v = out_h != h or y0 != 0 or y1 != out_h
    # Pillow >= 13: vertical first when the height shrinks more than twice
    # as much as the width.
    horizontal_first = not (h - out_h > 0 and h - out_h > (w - out_w) * 2)
    if horizontal_first or not need_v:
        rows = image[first_row:last_row] if need_v else image
        if need_h:
            rows = _pass(rows, taps(w, x0, x1, out_w), axis=1)
        if need_v:
            rows = _pass(rows, [(first - first_row, weights) for first, weights in vtaps], axis=0)
    else:
        rows = _pass(image, vtaps, axis=0)
        if need_h:
            rows = _pass(rows, taps(w, x0, x1, out_w), axis=1)
    return np.ascontiguousarray(rows)


def center_crop_box(w: int, h: int, out_w: int, out_h: int) -> tuple[float, float, float, float]:
    """The largest centred region of a w x h image with the output's aspect ratio."""
    target = out_w / out_h
    cw, ch = float(w), float(h)
    if cw / ch > target:
        cw = ch * target
    else:
        ch = cw / target
    x0, y0 = (w - cw) / 2, (h - ch) / 2
    return x0, y0, x0 + cw, y0 + ch

