"""The CPU engines side by side, in the same run: ONNX Runtime vs OpenVINO per
shipped model (FP32 with OpenVINO's default inference hint for this CPU, and
INT8-CPU), and JPEG decode by Pillow vs simplejpeg.

Each pair is timed in alternating rounds (A, B, A, B, ...) on the same
inputs, so load from elsewhere on the machine falls on both alike; the
results file gets both measurements, and B's ``extra`` and a note the ratio
of their medians (A's median time over B's) and the label agreement. Neither
is marked the stage's baseline (the prototype is, in a full run).
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from benchmarks.results import Measurement
from benchmarks.workload import tile
from wbc_edge import preprocess_batch
from wbc_edge.backends.probe import exact_int8
from wbc_edge.models import make_command, variant_path

#: images per inference call (the CLI's default batch)
ENGINE_BATCH = 64


def alternate(first, second, rounds: int) -> tuple[list[float], list[float]]:
    """Round times of ``first`` and ``second``, each called once per round in
    turn, after one untimed call each."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def record(results_log, times, *, stage, names, backends, precision, images, batch, threads, extra, note=""):
    """Both measurements of a pair, the second carrying the ratio."""
    medians = [float(np.median(t)) for t in times]
    ratio = medians[0] / medians[1]
    extra = {**extra, "speedup_vs_" + backends[0]: ratio}
    results_log.note(f"{names[1]}: {ratio:.2f}x {names[0]} (medians of alternating rounds in the same run, "
                     f"{images} images per round, {threads} thread{'s' * (threads != 1)})")
    for i in (0, 1):
        results_log.measurements.append(Measurement(
            stage=stage, name=names[i], backend=backends[i], precision=precision, batch=batch, threads=threads,
            images_per_round=images, times_s=[float(t) for t in times[i]], warmup_rounds=1, baseline=False,
            note=note, extra=extra if i else {}))
    return medians


@pytest.mark.parametrize("variant", ["fp32", "int8-cpu"])
def test_onnxruntime_vs_openvino(results_log, settings, all_threads, decoded_images, variant):
    pytest.importorskip("openvino", reason="OpenVINO is needed: pip install 'wbc-edge[openvino]'")
    from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner
    from wbc_edge.backends.openvino import OpenVinoRunner

    path = variant_path(variant)
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped (yet): make it with {make_command(variant)}")
    with OnnxRuntimeRunner(path, num_threads=all_threads) as ort, \
            OpenVinoRunner(path, num_threads=all_threads, cache_dir=False) as ov:
        meta = ort.metadata
        cells = preprocess_batch(decoded_images, meta.input_size, policy=meta.resize_policy)
        batch = tile(cells, ENGINE_BATCH)
        labels = meta.output_columns["logits"]
        agreement = float((ort.infer(cells)[:, labels].argmax(1) == ov.infer(cells)[:, labels].argmax(1)).mean())
        rounds = max(settings.min_rounds, min(settings.max_rounds, 10 if settings.mode == "full" else 2))
        times = alternate(lambda: ort.infer(batch), lambda: ov.infer(batch), rounds)
        hint, version = ov.inference_precision, ov.version
    medians = record(results_log, times, stage="inference",
                     names=(f"onnxruntime {variant}", f"openvino {variant} ({hint} inference hint)"),
                     backends=("onnxruntime", "openvino"), precision=meta.precision, images=ENGINE_BATCH,
                     batch=ENGINE_BATCH, threads=all_threads,
                     extra={"top1_agreement_with_onnxruntime": agreement, "cells_compared": len(cells),
                            "openvino_inference_precision": hint, "openvino_version": version})
    assert min(medians) > 0
    if variant == "int8-cpu" and not exact_int8():
        results_log.note(f"{variant}: this CPU has no VNNI or AMX, where both engines' U8S8 kernels saturate "
                         f"(docs/measurements.md); agreement {agreement:.1%} is recorded, not a target here")
        return
    assert agreement >= 0.99, f"{variant}: OpenVINO agrees with ONNX Runtime on {agreement:.1%} of the cells"


def test_decode_pillow_vs_simplejpeg(results_log, settings, preprocess_images):
    simplejpeg = pytest.importorskip("simplejpeg")
    from PIL import Image

    data = [path.read_bytes() for path in preprocess_images.paths]

    def pillow():
        out = []
        for item in data:
            with Image.open(io.BytesIO(item), formats=["JPEG"]) as image:
                out.append(np.asarray(image.convert("RGB")))
        return out

    def turbo():
        return [simplejpeg.decode_jpeg(item, colorspace="RGB", strict=True) for item in data]

    same = sum(np.array_equal(a, b) for a, b in zip(pillow(), turbo()))
    times = alternate(pillow, turbo, settings.preprocess_rounds)
    record(results_log, times, stage="decode", names=("Pillow: Image.open + convert('RGB')",
                                                      "simplejpeg.decode_jpeg(strict=True)"),
           backends=("pillow", "simplejpeg"), precision="uint8", images=len(data), batch=None, threads=1,
           extra={"bit_exact_with_pillow": f"{same} of {len(data)}", "simplejpeg_version": simplejpeg.__version__},
           note=preprocess_images.note)
    assert same == len(data)


def test_decode_scaled_in_the_dct(results_log, settings, preprocess_images, model_metadata):
    """simplejpeg at full size vs scaled in the DCT to the smallest size >= the
    model input, and how much that changes the preprocessed cells (why the SDK
    decodes ordinary cells at full size)."""
    simplejpeg = pytest.importorskip("simplejpeg")
    meta = model_metadata
    height, width = meta.input_size
    data = [path.read_bytes() for path in preprocess_images.paths]

    def full():
        return [simplejpeg.decode_jpeg(item, colorspace="RGB", strict=True) for item in data]

    def scaled():
        return [simplejpeg.decode_jpeg(item, colorspace="RGB", strict=True, min_height=height, min_width=width)
                for item in data]

    def prepared(images):
        return preprocess_batch(images, meta.input_size, policy=meta.resize_policy)

    small = scaled()
    difference = np.abs(prepared(full()).astype(np.int16) - prepared(small))
    times = alternate(full, scaled, settings.preprocess_rounds)
    record(results_log, times, stage="decode", names=("simplejpeg full size",
                                                      f"simplejpeg scaled in the DCT to >= {height}x{width}"),
           backends=("simplejpeg", "simplejpeg"), precision="uint8", images=len(data), batch=None, threads=1,
           extra={"scaled_sizes": sorted({f"{a.shape[0]}x{a.shape[1]}" for a in small}),
                  "preprocessed_identical": f"{int((difference.reshape(len(data), -1).max(1) == 0).sum())} "
                                            f"of {len(data)}",
                  "preprocessed_max_difference": int(difference.max()),
                  "preprocessed_mean_difference": float(difference.mean())},
           note=preprocess_images.note)
