"""The cell-centring resize policy: the C++ finder against the plain numpy
reference (bit for bit), the resampled field against the Python resize
reference, what it does for framing from other labs, and images with no white
cell in them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.reference_cell_box import find_cell
from tests.reference_resize import resize_reference
from wbc_edge import preprocess_batch


def _boxes(images, size=(64, 64)):
    boxes = np.zeros((len(images), 5), np.float32)
    out = preprocess_batch(images, size, policy="cell_center", boxes=boxes)
    return out, boxes


def _framings(image: np.ndarray) -> list[np.ndarray]:
    """The same cell as other labs frame it: smaller in a bigger field, off
    centre, a non-square crop, a strided view, with alpha."""
    h, w = image.shape[:2]
    small = np.asarray(Image.fromarray(image).resize((w // 2, h // 2), Image.BILINEAR))
    canvas = np.empty((h + 40, w * 2, 3), np.uint8)
    canvas[:] = image[:4, :4].reshape(-1, 3).mean(0).astype(np.uint8)  # the smear's background colour
    canvas[30:30 + small.shape[0], 10:10 + small.shape[1]] = small
    rgba = np.dstack([image, np.full((h, w), 255, np.uint8)])
    return [image, small, canvas, image[:, : w * 2 // 3], image[::2, ::3], rgba]


def test_the_box_matches_the_reference_bit_for_bit(cell_images):
    images = [f for image in cell_images for f in _framings(image)]
    for size in ((64, 64), (48, 80)):
        _, boxes = _boxes(images, size)
        for i, image in enumerate(images):
            box, found = find_cell(image, *size)
            assert tuple(boxes[i, :4].tolist()) == box, f"image {i}"
            assert bool(boxes[i, 4]) == found, f"image {i}"


def test_the_field_is_resampled_exactly_as_pillow_would(cell_images):
    images = [f for image in cell_images[:4] for f in _framings(image)[:4]]
    out, boxes = _boxes(images, (40, 40))
    for i, image in enumerate(images):
        expected = resize_reference(image, 40, 40, box=tuple(float(v) for v in boxes[i, :4]))
        np.testing.assert_array_equal(out[i], expected, err_msg=f"image {i}")


def test_every_sample_cell_is_found_and_centred(cell_images):
    _, boxes = _boxes(cell_images)
    assert boxes[:, 4].all()
    for image, (x0, y0, x1, y1, _) in zip(cell_images, boxes):
        h, w = image.shape[:2]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 == pytest.approx(y1 - y0, rel=1e-4)  # square field for a square output


def _pasted(image: np.ndarray, scale: float, canvas_hw: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    cell = np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
    canvas = np.empty((*canvas_hw, 3), np.uint8)
    canvas[:] = image[:4, :4].reshape(-1, 3).mean(0).astype(np.uint8)  # the smear's background colour
    canvas[at[0]:at[0] + cell.shape[0], at[1]:at[1] + cell.shape[1]] = cell
    return canvas


def test_the_field_follows_the_cell_whatever_its_scale_and_place(cell_images):
    """Framing invariance, the reason for the policy: one cell at half size
    near the top left of a wide field and at a third of its size elsewhere in
    another gets the same field, in the cell's own coordinates: the same
    centre and the same size relative to the cell."""
    pastes = [(1 / 2, (400, 520), (20, 30)), (1 / 3, (300, 340), (150, 180))]
    agree = found_both = 0
    for image in cell_images:
        frames = [_pasted(image, scale, hw, at) for scale, hw, at in pastes]
        _, boxes = _boxes(frames)
        if not boxes[:, 4].all():
            continue
        found_both += 1
        # back to the original image's pixels: (coordinate - offset) / scale
        fields = []
        for (scale, _, (top, left)), (x0, y0, x1, y1, _) in zip(pastes, boxes):
            fields.append(((x0 + x1) / 2 - left) / scale), fields.append(((y0 + y1) / 2 - top) / scale)
            fields.append((x1 - x0) / scale)
        (cx_a, cy_a, side_a), (cx_b, cy_b, side_b) = fields[:3], fields[3:]
        size = max(image.shape[:2])
        agree += (abs(cx_a - cx_b) < 0.05 * size and abs(cy_a - cy_b) < 0.05 * size
                  and abs(side_a - side_b) < 0.15 * side_a)
    assert found_both >= 0.7 * len(cell_images)
    assert agree >= 0.85 * found_both  # the 64-point sampling grid limits the precision


def _text_picture() -> np.ndarray:
    picture = Image.new("RGB", (240, 160), "white")
    draw = ImageDraw.Draw(picture)
    for row in range(8):
        draw.text((8, 8 + 18 * row), "Lorem ipsum dolor sit amet, 0123456789", fill=(20, 20, 20))
    return np.asarray(picture)


def no_cell_images(cell_images) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    sample = cell_images[0]
    return {
        "blank": np.full((120, 120, 3), 235, np.uint8),
        "black": np.zeros((64, 96, 3), np.uint8),
        "noise": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
        "gray noise": np.repeat(rng.integers(0, 256, (150, 150, 1), dtype=np.uint8), 3, axis=2),
        "printed text": _text_picture(),
        "smear background": sample[:70, :70].copy(),  # a corner of a real smear: red cells, no white cell
        "gray": np.full((80, 80), 128, np.uint8),
    }


def test_no_white_cell_is_found_in_pictures_without_one(cell_images):
    pictures = no_cell_images(cell_images)
    _, boxes = _boxes(list(pictures.values()))
    for (name, picture), row in zip(pictures.items(), boxes):
        assert row[4] == 0.0, name
        assert find_cell(picture, 64, 64)[1] is False, name


def test_boxes_argument_is_checked(cell_images):
    with pytest.raises(ValueError, match="boxes"):
        preprocess_batch(cell_images[:2], (32, 32), policy="cell_center", boxes=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="boxes"):
        preprocess_batch(cell_images[:2], (32, 32), policy="cell_center", boxes=np.zeros((2, 5), np.float64))
