"""The C++ batch preprocessing against Pillow and a plain Python reference, on
real cell images; its input forms, output forms, threads and error paths. The
bit-exactness tests run once per resampling kernel this CPU can run (AVX2,
portable): every kernel must give Pillow's bytes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from tests.reference_resize import center_crop_box, resize_reference
from wbc_edge import _preprocess, preprocess_batch
from wbc_edge.preprocess import normalization_table


def pillow_resize(image: np.ndarray, size, box=None) -> np.ndarray:
    h, w = size
    return np.asarray(Image.fromarray(image).convert("RGB").resize((w, h), Image.BILINEAR, box=box))


def _kernel_params():
    """Every kernel of this build; those this CPU cannot run are skipped, saying why."""
    return [pytest.param(name, id=name, marks=[pytest.mark.skip(reason=f"kernel {name!r}: {why}")] if why else [])
            for name, why in _preprocess._kernels()]


@pytest.fixture(params=_kernel_params())
def kernel(request):
    """Forces one resampling kernel for the test (all threads), then restores the previous one."""
    previous = _preprocess._set_kernel(request.param)
    yield request.param
    _preprocess._set_kernel(previous)


# Downscaling (the usual case), upscaling, non-square, identity, one axis only.
SIZES = [(128, 128), (96, 96), (224, 224), (64, 100), (400, 380), (363, 360), (360, 128), (1, 1)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_pillow_on_real_cells(cell_images, size, kernel):
    out = preprocess_batch(cell_images, size)
    assert out.shape == (len(cell_images), *size, 3) and out.dtype == np.uint8
    expected = np.stack([pillow_resize(image, size) for image in cell_images])
    diff = np.abs(out.astype(np.int16) - expected)
    # The contract: within 1 grey level on >= 99% of pixels. The implementation
    # follows Pillow's arithmetic exactly, so it is in fact identical.
    assert (diff <= 1).mean() >= 0.99
    assert diff.max() == 0


def test_matches_python_reference(cell_images, kernel):
    for image, size in zip(cell_images[::40], [(128, 128), (57, 203), (400, 381), (9, 9), (128, 128), (200, 50)]):
        np.testing.assert_array_equal(preprocess_batch([image], size)[0], resize_reference(image, *size))


def test_center_crop_policy(cell_images, kernel):
    images = [cell_images[0], cell_images[0][:, 40:], cell_images[1][100:]]  # square, tall, wide
    size = (128, 160)
    out = preprocess_batch(images, size, policy="center_crop")
    for image, result in zip(images, out):
        h, w = image.shape[:2]
        box = center_crop_box(w, h, size[1], size[0])
        np.testing.assert_array_equal(result, pillow_resize(np.ascontiguousarray(image), size, box=box))
        np.testing.assert_array_equal(result, resize_reference(image, *size, box=box))


def test_gray_alpha_and_single_channel(cell_images, kernel):
    rgb = cell_images[3]
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    out = preprocess_batch([gray, gray[:, :, None], rgba, rgb], (96, 96))
    gray_expected = pillow_resize(gray, (96, 96))
    np.testing.assert_array_equal(out[0], gray_expected)
    np.testing.assert_array_equal(out[1], gray_expected)
    assert (out[0][..., 0] == out[0][..., 1]).all() and (out[0][..., 1] == out[0][..., 2]).all()
    np.testing.assert_array_equal(out[2], out[3])  # alpha dropped, not blended


def test_any_strides(cell_images, kernel):
    image = cell_images[5]
    views = [
        image[::-1],                        # negative row stride
        image[:, ::-1],                     # negative column stride
        image[10:300:2, 5:333:3],           # steps
        np.asfortranarray(image),           # column-major
        image.transpose(1, 0, 2),           # swapped axes
        image[:, :, ::-1],                  # BGR view: negative channel stride
    ]
    out = preprocess_batch(views, (128, 128))
    for view, result in zip(views, out):
        np.testing.assert_array_equal(result, pillow_resize(np.ascontiguousarray(view), (128, 128)))


def test_stacked_batch_equals_list(cell_images, kernel):
    stack = np.stack([img[:360, :360] for img in cell_images[:12]])
    np.testing.assert_array_equal(preprocess_batch(stack, (128, 128)), preprocess_batch(list(stack), (128, 128)))


def test_tiny_and_extreme_images(kernel):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
              [(1, 1, 3), (1, 1), (2, 3, 4), (1, 500, 3), (700, 1, 3), (5, 5, 1)]]
    out = preprocess_batch(images, (128, 128))
    for image, result in zip(images, out):
        np.testing.assert_array_equal(result, resize_reference(image, 128, 128))
    # a 1x1 image is a flat colour
    assert (out[0] == images[0][0, 0]).all()


# Source shapes and output sides for the size sweep: downscaling (odd and even
# tap counts), upscaling, identity and one-axis resizes, both pass orders
# (vertical first when the height shrinks more than twice as much as the
# width), rows whose length is and is not a multiple of 32 bytes.
SWEEP_SOURCES = [(61, 47), (23, 200), (200, 9)]
SWEEP_SIDES = [1, 2, 3, 4, 5, 7, 8, 9, 11, 16, 20, 23, 31, 32, 47, 61, 64, 97, 128, 200, 224, 255]


def test_many_size_combinations_match_pillow(kernel):
    rng = np.random.default_rng(1)
    combinations = 0
    for h, w in SWEEP_SOURCES:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for out_h in SWEEP_SIDES:
            for out_w in SWEEP_SIDES:
                result = preprocess_batch([image], (out_h, out_w))[0]
                np.testing.assert_array_equal(result, pillow_resize(image, (out_h, out_w)),
                                              err_msg=f"{h}x{w} -> {out_h}x{out_w}")
                combinations += 1
    assert combinations == 1452


@pytest.mark.parametrize("shape, size", [
    ((4, 3001, 3), (1, 1)), ((4, 3001, 3), (3, 7)), ((3001, 5, 3), (2, 4)), ((3001, 5, 3), (1, 1)),
    ((1, 2, 3), (255, 300)),
], ids=str)
def test_extreme_ratios_match_pillow(kernel, shape, size):
    """Thousands of taps per output, and single taps of weight 1.0 (2^22)."""
    image = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_batch([image], size)[0], pillow_resize(image, size))


def test_saturated_images_stay_saturated(kernel):
    """All-255 pixels give the largest sums the arithmetic has to hold."""
    image = np.full((363, 360, 3), 255, np.uint8)
    for size in [(224, 224), (128, 128), (7, 300), (500, 9)]:
        out = preprocess_batch([image, image[::-1, ::2]], size)
        assert (out == 255).all()
        np.testing.assert_array_equal(out[0], pillow_resize(image, size))


def test_cell_center_policy_matches_reference(kernel, cell_images):
    images = [cell_images[0], cell_images[7][:, :250], cell_images[9][::2, ::3]]
    boxes = np.zeros((len(images), 5), np.float32)
    out = preprocess_batch(images, (56, 72), policy="cell_center", boxes=boxes)
    for image, result, box in zip(images, out, boxes):
        np.testing.assert_array_equal(result, resize_reference(image, 56, 72, box=tuple(float(v) for v in box[:4])))


def test_kernel_selection():
    kernels = dict(_preprocess._kernels())
    assert kernels["portable"] == ""  # every CPU runs it
    with pytest.raises(ValueError, match="unknown kernel 'sse9'"):
        _preprocess._set_kernel("sse9")
    for name, why in kernels.items():
        if why:
            with pytest.raises(RuntimeError, match=f"kernel '{name}': "):
                _preprocess._set_kernel(name)
    # the default is the first runnable one (best first), and setting returns the previous
    runnable = [name for name, why in kernels.items() if not why]
    previous = _preprocess._set_kernel("portable")
    try:
        assert previous == runnable[0]
        assert _preprocess._set_kernel(previous) == "portable"
    finally:
        _preprocess._set_kernel(previous)


def test_float_outputs_equal_numpy_normalization(cell_images):
    mean, std = (0.7, 0.6, 0.75), (0.15, 0.2, 0.1)
    u8 = preprocess_batch(cell_images[:10], (64, 64))
    f32 = preprocess_batch(cell_images[:10], (64, 64), dtype=np.float32, mean=mean, std=std)
    f16 = preprocess_batch(cell_images[:10], (64, 64), dtype=np.float16, mean=mean, std=std)
    expected = (u8.astype(np.float32) / np.float32(255.0) - np.float32(mean)) / np.float32(std)
    expected = expected.transpose(0, 3, 1, 2)
    assert f32.shape == (10, 3, 64, 64) and f32.flags.c_contiguous
    np.testing.assert_array_equal(f32, expected)
    np.testing.assert_array_equal(f16, expected.astype(np.float16))


def test_normalization_table_checks():
    with pytest.raises(ValueError, match="std must be positive"):
        normalization_table((0, 0, 0), (1, 0, 1))


def test_out_buffer_is_filled_in_place(cell_images):
    out = np.zeros((4, 32, 48, 3), np.uint8)
    result = preprocess_batch(cell_images[:4], (32, 48), out=out)
    assert result is out
    np.testing.assert_array_equal(out, preprocess_batch(cell_images[:4], (32, 48)))


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_identical_whatever_the_thread_count(cell_images, threads):
    single = preprocess_batch(cell_images, (96, 96), num_threads=1)
    np.testing.assert_array_equal(preprocess_batch(cell_images, (96, 96), num_threads=threads), single)


def test_concurrent_callers_get_their_own_results(cell_images):
    expected = {n: preprocess_batch(cell_images[n::4], (80, 80), num_threads=1) for n in range(4)}
    results, errors = {}, []

    def work(n):
        try:
            for _ in range(5):
                results[n] = preprocess_batch(cell_images[n::4], (80, 80), num_threads=2)
                np.testing.assert_array_equal(results[n], expected[n])
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_empty_batch():
    assert preprocess_batch([], (8, 8)).shape == (0, 8, 8, 3)


# --- errors: named index, named problem, no crash --------------------------------------------

GOOD = np.zeros((10, 10, 3), np.uint8)


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((10, 10, 3), np.float32), TypeError, r"image 1: dtype is float32, expected uint8"),
    (np.zeros((10, 10, 3), np.uint16), TypeError, r"image 1: dtype is uint16"),
    (np.zeros((10,), np.uint8), ValueError, r"image 1: shape \(10,\) has 1 dimensions"),
    (np.zeros((2, 10, 10, 3), np.uint8), ValueError, r"image 1: .* has 4 dimensions"),
    (np.zeros((10, 10, 2), np.uint8), ValueError, r"image 1: .* has 2 channels; expected 1 \(gray\), 3 \(RGB\) or 4"),
    (np.zeros((10, 10, 5), np.uint8), ValueError, r"image 1: .* has 5 channels"),
    (np.zeros((0, 10, 3), np.uint8), ValueError, r"image 1: image is empty, shape \(0, 10, 3\)"),
    (np.zeros((10, 0), np.uint8), ValueError, r"image 1: image is empty"),
    ([[1, 2], [3, 4]], TypeError, r"image 1: expected a numpy uint8 array, got list"),
    (None, TypeError, r"image 1: expected a numpy uint8 array, got NoneType"),
])
def test_bad_images_name_index_and_problem(bad, error, message):
    with pytest.raises(error, match=message):
        preprocess_batch([GOOD, bad, GOOD], (8, 8))


@pytest.mark.parametrize("out, error, message", [
    (np.zeros((3, 8, 8, 3), np.float32), TypeError, r"out: dtype is float32, expected uint8"),
    (np.zeros((2, 8, 8, 3), np.uint8), ValueError, r"out: shape is \(2, 8, 8, 3\), expected \(3, 8, 8, 3\)"),
    (np.zeros((3, 8, 8, 3), np.uint8)[:, ::-1], ValueError, r"out: must be C-contiguous"),
    ([0] * 3, TypeError, r"out: expected a numpy array"),
])
def test_bad_out_is_named(out, error, message):
    with pytest.raises(error, match=message):
        preprocess_batch([GOOD, GOOD, GOOD], (8, 8), out=out)


def test_read_only_out_is_refused():
    out = np.zeros((1, 8, 8, 3), np.uint8)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out: is read-only"):
        preprocess_batch([GOOD], (8, 8), out=out)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"size": (0, 8)}, ValueError, "size must be at least"),
    ({"size": "big"}, ValueError, "size must be"),
    ({"size": (8, 8), "dtype": np.int32}, TypeError, "dtype must be uint8, float32 or float16"),
    ({"size": (8, 8), "policy": "letterbox"}, ValueError, "policy must be one of"),
    ({"size": (8, 8), "num_threads": 0}, ValueError, "num_threads must be a positive integer"),
])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        preprocess_batch([GOOD], **kwargs)


def test_bad_batch_containers():
    with pytest.raises(ValueError, match="stacked batch must have shape"):
        preprocess_batch(GOOD, (8, 8))
    with pytest.raises(TypeError, match="images must be a sequence"):
        preprocess_batch(42, (8, 8))
