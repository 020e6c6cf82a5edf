"""A plain numpy reference of the C++ cell finder (csrc/cell_box.cpp), written
from its description, to check the extension against something other than
itself. Returns the same box bit for bit (the same integer moments and the same
few IEEE double operations, in the same order)."""

from __future__ import annotations

import math

import numpy as np

from tests.reference_resize import center_crop_box

GRID, PEAK_PERMILLE, MIN_STAIN, MIN_PEAK = 64, 995, 25, 30
TRIM_NUM, TRIM_DEN = 5, 2
MIN_POINTS_PERMILLE, MAX_SPREAD_PERMILLE = 2, 250
FIELD_NUM, FIELD_DEN = 5, 1


def _moments(cols: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """(count, total weight, weighted sums of x, y, x^2, y^2), as exact integers."""
    c, r, w = (a.astype(np.int64) for a in (cols, rows, weights))
    return len(c), int(w.sum()), int((w * c).sum()), int((w * r).sum()), int((w * c * c).sum()), int((w * r * r).sum())


def find_cell(image: np.ndarray, out_h: int, out_w: int) -> tuple[tuple[float, ...], bool]:
    """(box as float32 values x0, y0, x1, y1; found) for one uint8 image."""
    height, width = image.shape[:2]
    fallback = (tuple(float(np.float32(v)) for v in center_crop_box(width, height, out_w, out_h)), False)
    if image.ndim == 2 or image.shape[2] < 3:
        return fallback
    step = max(1, max(height, width) // GRID)
    sub = image[step // 2::step, step // 2::step, :3].astype(np.int32)
    rows, cols = sub.shape[:2]
    score = (sub[..., 0] + sub[..., 2]) // 2 - sub[..., 1]
    total = rows * cols
    peak = int(np.sort(score.ravel())[(PEAK_PERMILLE * (total - 1)) // 1000])
    if peak < MIN_PEAK:
        return fallback
    threshold = max(MIN_STAIN, peak // 2)
    ys, xs = np.nonzero(score > threshold)
    weights = score[ys, xs] - threshold
    count, n, sx, sy, sxx, syy = _moments(xs, ys, weights)
    min_points = max(4, total * MIN_POINTS_PERMILLE // 1000)
    if count < min_points:
        return fallback
    spread2 = float(max(n * sxx - sx * sx, n * syy - sy * sy, n * n))
    dx = (xs.astype(np.int64) * n - sx).astype(np.float64)
    dy = (ys.astype(np.int64) * n - sy).astype(np.float64)
    keep = float(TRIM_DEN * TRIM_DEN) * (dx * dx + dy * dy) <= float(TRIM_NUM * TRIM_NUM) * spread2
    count, n, sx, sy, sxx, syy = _moments(xs[keep], ys[keep], weights[keep])
    if count < min_points:
        return fallback
    var = max(n * sxx - sx * sx, n * syy - sy * sy)
    spread = math.sqrt(float(var)) / float(n)
    if spread * 1000.0 > float(MAX_SPREAD_PERMILLE) * max(rows, cols):
        return fallback
    cx = (step // 2) + 0.5 + step * (sx / n)
    cy = (step // 2) + 0.5 + step * (sy / n)
    half = max(1.0, spread * step) * FIELD_NUM / FIELD_DEN
    aspect = out_w / out_h
    fw = 2.0 * half * (aspect if aspect >= 1.0 else 1.0)
    fh = 2.0 * half * (1.0 if aspect >= 1.0 else 1.0 / aspect)
    shrink = min(1.0, width / fw, height / fh)
    fw = min(fw * shrink, float(width))
    fh = min(fh * shrink, float(height))
    x0 = max(min(cx - fw / 2.0, width - fw), 0.0)
    y0 = max(min(cy - fh / 2.0, height - fh), 0.0)
    return tuple(float(np.float32(v)) for v in (x0, y0, x0 + fw, y0 + fh)), True
