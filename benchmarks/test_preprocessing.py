"""Decoding and preprocessing: the SDK's thread-pooled decoding and C++
``preprocess_batch`` against the prototype's Pillow + numpy loop, on real cells,
at one thread and at every thread this process may use.

The preprocessing baseline (:func:`benchmarks.prototype.prototype_preprocess`)
starts from the same decoded arrays as the SDK: per image ``Image.fromarray``,
``convert("RGB")``, ``resize((W, H), BILINEAR)``, float32 ``/ 255``,
``(x - mean) / std``, HWC -> CHW, then ``np.stack``. It is a Python loop: one
thread, whatever the machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.prototype import prototype_decode, prototype_preprocess
from wbc_edge import preprocess_batch
from wbc_edge.decode import decode_images

PROTOTYPE_PREPROCESS = ("Pillow fromarray + convert('RGB') + resize(BILINEAR), numpy float32 /255, "
                        "(x-mean)/std, CHW, stack")


def _thread_counts(all_threads: int) -> list[int]:
    return [1] if all_threads == 1 else [1, all_threads]


def test_decode_prototype(measure, preprocess_images):
    paths = preprocess_images.paths
    measure(lambda: prototype_decode(paths), stage="decode", name="prototype: Image.open + convert('RGB')",
            backend="pillow", precision="uint8", images=len(paths), threads=1, baseline=True,
            rounds=None, note=preprocess_images.note)


@pytest.mark.parametrize("which", ["one", "all"])
def test_decode_sdk(measure, preprocess_images, all_threads, which):
    threads = 1 if which == "one" else all_threads
    if which == "all" and all_threads == 1:
        pytest.skip("'all threads' is 1 here (--threads 1, or one CPU): the one-thread case covers it")
    paths = preprocess_images.paths
    decoded = measure(lambda: decode_images(paths, num_threads=threads), stage="decode",
                      name=f"wbc_edge.decode_images ({threads} thread{'s' * (threads > 1)})",
                      backend="wbc_edge", precision="uint8", images=len(paths), threads=threads)
    assert all(isinstance(image, np.ndarray) for image in decoded)


#: Output sizes: the shipped model's input size ("model"), and 224 x 224, the
#: size the prototype ran at and the one the preprocessing target is set for.
PREPROCESS_SIZES = ("model", "224")


def _size(which: str, meta) -> tuple[int, int]:
    return tuple(meta.input_size) if which == "model" else (224, 224)


def _stage(which: str) -> str:
    return "preprocess" if which == "model" else "preprocess 224x224"


@pytest.mark.parametrize("at", PREPROCESS_SIZES)
def test_preprocess_prototype(measure, decoded_images, model_metadata, settings, at):
    meta = model_metadata
    size = _size(at, meta)
    measure(lambda: prototype_preprocess(decoded_images, size, meta.mean, meta.std),
            stage=_stage(at), name=f"prototype: Pillow + numpy ({size[0]}x{size[1]})", backend="pillow+numpy",
            precision="float32", images=len(decoded_images), threads=1, baseline=True,
            rounds=settings.preprocess_rounds, note=PROTOTYPE_PREPROCESS)


@pytest.mark.parametrize("at", PREPROCESS_SIZES)
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
@pytest.mark.parametrize("which", ["one", "all"])
def test_preprocess_sdk(measure, decoded_images, model_metadata, settings, all_threads, which, dtype, at):
    if which == "all" and all_threads == 1:
        pytest.skip("'all threads' is 1 here (--threads 1, or one CPU): the one-thread case covers it")
    threads = 1 if which == "one" else all_threads
    meta = model_metadata
    size = _size(at, meta)
    kwargs = {"dtype": np.dtype(dtype), "mean": meta.mean, "std": meta.std}
    # A fresh output each call, as the Classifier does (out= would reuse one).
    result = measure(lambda: preprocess_batch(decoded_images, size, num_threads=threads, **kwargs),
                     stage=_stage(at), name=f"wbc_edge.preprocess_batch {dtype} ({threads} thread"
                                            f"{'s' * (threads > 1)}, {size[0]}x{size[1]})",
                     backend="wbc_edge", precision=dtype, images=len(decoded_images), threads=threads,
                     rounds=settings.preprocess_rounds,
                     note="uint8 NHWC: what the models take" if dtype == "uint8" else
                          "float32 NCHW normalized: the prototype's output, bit for bit")
    if dtype == "float32":  # the comparison is only fair if both make the same tensor
        assert np.array_equal(result, prototype_preprocess(decoded_images, size, meta.mean, meta.std))


@pytest.mark.parametrize("at", PREPROCESS_SIZES)
def test_preprocess_sdk_cell_center(measure, decoded_images, model_metadata, settings, at):
    """Cell centring's cost: the nucleus-stain finder, then the same resampling
    of a smaller field; one thread, against the prototype's Pillow path."""
    size = _size(at, model_metadata)
    measure(lambda: preprocess_batch(decoded_images, size, num_threads=1, policy="cell_center"),
            stage=_stage(at), name=f"wbc_edge.preprocess_batch uint8 cell_center (1 thread, {size[0]}x{size[1]})",
            backend="wbc_edge", precision="uint8", images=len(decoded_images), threads=1,
            rounds=settings.preprocess_rounds, note="finds the white cell, then resamples the field around it")
