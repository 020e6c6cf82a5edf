"""TensorRT for real: engines built from the shipped ONNX models, checked
against onnxruntime on the real sample cell images. Runs where TensorRT and an
NVIDIA GPU exist; skipped elsewhere with the reason.

Thresholds (the calibration issue's, stated for the 208 sample images): top-1
agreement with the FP32 model run by onnxruntime >= 99.9% for FP32 and FP16
engines (so all 208 images agree) and >= 99.5% for INT8 (at most 1 of 208 differs).
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from wbc_edge.backends.base import BatchJob
from wbc_edge.errors import ModelMismatchError
from wbc_edge.metadata import ModelMetadata
from wbc_edge.preprocess import preprocess_batch

MODELS = Path(__file__).resolve().parents[2] / "wbc_edge" / "models"
VARIANTS = {"fp32": "default.fp32.onnx", "fp16": "default.fp16.onnx", "int8": "default.int8-tensorrt.onnx"}
AGREEMENT = {"fp32": 0.999, "fp16": 0.999, "int8": 0.995}
PROFILE = dict(min_batch=1, opt_batch=16, max_batch=64)  # small: quick builds, and 150 images need a split


def _tensorrt_status() -> str | None:
    try:
        importlib.import_module("tensorrt")
    except (ImportError, OSError) as error:
        return f"TensorRT is not installed ({error}): pip install 'wbc-edge[tensorrt]'"
    try:
        from wbc_edge.backends import cuda

        if cuda.device_count() < 1:
            return "no NVIDIA GPU visible"
    except Exception as error:
        return f"no usable NVIDIA GPU ({error})"
    return None


_REASON = _tensorrt_status()
pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def engines(build_dir):
    """precision -> engine path, for every shipped ONNX variant (built once)."""
    from wbc_edge.export.build_engine import build_engine

    built = {}
    for precision, name in VARIANTS.items():
        onnx = MODELS / name
        if onnx.is_file():
            engine = build_dir / f"cells.{precision}.engine"
            build_engine(onnx, engine, timing_cache=build_dir / "timing.cache", progress=None, **PROFILE)
            built[precision] = engine
    if "fp32" not in built:
        pytest.skip("the shipped default.fp32.onnx is not in this install")
    return built


@pytest.fixture(scope="module")
def images(cell_images):
    meta = ModelMetadata.load(MODELS / "default.fp32.json")
    return preprocess_batch(cell_images, size=meta.input_size, policy=meta.resize_policy)


@pytest.fixture(scope="module")
def reference(images):
    """FP32 logits from onnxruntime on the CPU."""
    from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(MODELS / "default.fp32.onnx") as runner:
        return runner.infer(images)


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("precision", list(VARIANTS))
def test_engine_agrees_with_onnxruntime(engines, images, reference, precision):
    from wbc_edge.backends.tensorrt import TensorRTRunner

    if precision not in engines:
        pytest.skip(f"{VARIANTS[precision]} is not shipped in this install (wbc-edge calibrate makes it)")
    with TensorRTRunner(engines[precision]) as runner:
        assert runner.metadata.precision == precision
        logits = runner.infer(images)
    assert logits.shape == reference.shape and logits.dtype == np.float32 and np.isfinite(logits).all()
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    allowed = math.floor(len(images) * (1 - AGREEMENT[precision]))
    assert agreement >= AGREEMENT[precision], (
        f"{precision}: top-1 agreement {agreement:.4f} on {len(images)} images ({allowed} may differ)")
    if precision == "fp32":
        assert np.abs(_softmax(logits) - _softmax(reference)).max() < 0.01


def test_engine_metadata_describes_this_machine(engines):
    import tensorrt as trt

    from wbc_edge.backends import cuda

    meta = ModelMetadata.load(engines["fp32"].with_suffix(".json"))
    onnx_meta = ModelMetadata.load(MODELS / "default.fp32.json")
    gpu = cuda.device_info(0)
    record = meta.tensorrt
    assert meta.format == "engine" and meta.classes == onnx_meta.classes and meta.precision == onnx_meta.precision
    assert (record["version"], record["gpu_name"], record["compute_capability"]) == (
        trt.__version__, gpu.name, gpu.compute_capability_str)
    assert (record["min_batch"], record["opt_batch"], record["max_batch"]) == (1, 16, 64)
    assert not record["version_compatible"] and record["hardware_compatibility"] == "none"


def test_batch_sizes_one_odd_max_and_over_max(engines, images):
    from wbc_edge.backends.tensorrt import TensorRTRunner

    stack = np.concatenate([images, images])[:150]
    with TensorRTRunner(engines["fp32"]) as runner:
        assert runner.max_batch_size == 64
        whole = runner.infer(stack)  # 150 > 64: split into 64 + 64 + 22
        scale = np.abs(whole).max()
        for count in (1, 37, 64):
            part = runner.infer(stack[:count])
            assert part.shape == (count, runner.metadata.num_classes)
            np.testing.assert_allclose(part, whole[:count], atol=1e-3 * scale)
            assert np.array_equal(part.argmax(1), whole[:count].argmax(1))


def test_pipeline_fills_pinned_buffers_in_place(engines, images, cell_images):
    from wbc_edge.backends.tensorrt import TensorRTRunner

    meta = ModelMetadata.load(MODELS / "default.fp32.json")
    chunks = [cell_images[i:i + 50] for i in range(0, len(cell_images), 50)]
    with TensorRTRunner(engines["fp32"]) as runner:
        expected = runner.infer(images)[:, :meta.num_classes]
        jobs = (BatchJob(len(chunk), lambda out, c=chunk: preprocess_batch(c, size=meta.input_size, out=out,
                                                                            policy=meta.resize_policy))
                for chunk in chunks)
        got = np.concatenate([outputs["logits"] for _, outputs in runner.run_batches(jobs)])
    np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())


def test_engine_with_min_batch_4_takes_batches_of_1_3_and_5(build_dir, images):
    from wbc_edge.backends.tensorrt import TensorRTRunner
    from wbc_edge.export.build_engine import build_engine

    engine = build_dir / "cells.min4.engine"
    build_engine(MODELS / "default.fp32.onnx", engine, min_batch=4, opt_batch=8, max_batch=16, progress=None)
    with TensorRTRunner(engine) as runner:
        whole = runner.infer(images[:16])
        for count in (1, 3, 5):
            np.testing.assert_allclose(runner.infer(images[:count]), whole[:count], atol=1e-3 * np.abs(whole).max())


def test_two_runners_opened_and_closed_in_both_orders(engines, images):
    from wbc_edge.backends.tensorrt import TensorRTRunner

    for first in (0, 1):
        runners = [TensorRTRunner(engines["fp32"]), TensorRTRunner(engines["fp32"])]
        runners[first].close()
        with runners[1 - first] as survivor:
            assert survivor.infer(images[:4]).shape[0] == 4


def test_network_precision_is_each_shipped_model_s(engines):
    import tensorrt as trt

    from wbc_edge.backends.tensorrt import shared_logger
    from wbc_edge.export.build_engine import network_flags, network_precision

    for precision, name in VARIANTS.items():
        if not (MODELS / name).is_file():
            continue
        builder = trt.Builder(shared_logger(trt))
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, shared_logger(trt))
        assert parser.parse((MODELS / name).read_bytes(), str(MODELS / name))
        assert network_precision(trt, network) == precision


def test_cuda_graph_replay_matches(engines, images):
    from wbc_edge.backends.tensorrt import TensorRTRunner

    with TensorRTRunner(engines["fp32"]) as plain, TensorRTRunner(engines["fp32"], cuda_graphs=[16, 37]) as graphs:
        for count in (16, 37, 5):  # two replayed sizes and one that runs normally
            np.testing.assert_allclose(graphs.infer(images[:count]), plain.infer(images[:count]),
                                       atol=1e-4 * np.abs(plain.infer(images[:count])).max())


def test_threads_get_the_same_answers(engines, images):
    from wbc_edge.backends.tensorrt import TensorRTRunner

    with TensorRTRunner(engines["fp32"]) as runner:
        expected = runner.infer(images)
        results, failures = {}, []

        def worker(index):
            try:
                results[index] = runner.infer(images)
            except Exception as error:
                failures.append(error)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures, failures[0]
    for got in results.values():
        np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())


def test_no_device_memory_leak_over_loads_and_batches(engines, images):
    from wbc_edge.backends import cuda
    from wbc_edge.backends.tensorrt import TensorRTRunner

    def cycle():
        with TensorRTRunner(engines["fp32"], cuda_graphs=[64]) as runner:
            for _ in range(20):
                runner.infer(images[:64])
                runner.infer(images[:7])

    cycle()
    free_before, _ = cuda.memory_info()
    for _ in range(5):
        cycle()
    free_after, _ = cuda.memory_info()
    assert free_before - free_after < 16 * 2**20


def test_mismatched_gpu_in_json_is_refused(engines, tmp_path):
    from wbc_edge.backends.tensorrt import TensorRTRunner

    engine = tmp_path / "moved.engine"
    shutil.copy(engines["fp32"], engine)
    meta = json.loads(engines["fp32"].with_suffix(".json").read_text())
    meta["tensorrt"]["gpu_name"] = "Some Other GPU"
    engine.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ModelMismatchError, match="Some Other GPU"):
        TensorRTRunner(engine)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with TensorRTRunner(engine, strict_gpu=False) as runner:
            assert runner.infer(np.zeros((2, *runner.input_shape), np.uint8)).shape[0] == 2
    assert any("Some Other GPU" in str(w.message) for w in caught)


def test_version_compatible_engine_on_the_lean_runtime(build_dir, images, engines):
    import tensorrt as trt

    from wbc_edge.backends.tensorrt import TensorRTRunner
    from wbc_edge.export.build_engine import build_engine

    engine = build_dir / "cells.vc.engine"
    meta = build_engine(MODELS / "default.fp32.onnx", engine, version_compatible=True, progress=None, **PROFILE)
    assert meta.tensorrt["version_compatible"] and not meta.tensorrt["exclude_lean_runtime"]
    with TensorRTRunner(engines["fp32"]) as runner:
        expected = runner.infer(images)
    with TensorRTRunner(engine, runtime="full") as runner:  # the full runtime runs it too
        np.testing.assert_allclose(runner.infer(images), expected, atol=1e-3 * np.abs(expected).max())
    try:
        lean = importlib.import_module("tensorrt_lean")
    except (ImportError, OSError):
        pytest.skip("tensorrt_lean is not installed: pip install 'wbc-edge[tensorrt-lean]'")
    if lean.__version__ != trt.__version__:
        pytest.skip(f"tensorrt_lean {lean.__version__} differs from tensorrt {trt.__version__}")
    with TensorRTRunner(engine, runtime="lean") as runner:
        assert runner.describe()["runtime"] == "lean"
        got = runner.infer(images)
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())


def test_cli_builds_and_reuses_the_timing_cache(tmp_path, capsys):
    from wbc_edge.cli import main

    cache = tmp_path / "timing.cache"
    for name in ("a.engine", "b.engine"):  # the second build reads the cache the first one wrote
        code = main(["build-engine", "--onnx", str(MODELS / "default.fp32.onnx"), "--out", str(tmp_path / name),
                     "--opt-batch", "8", "--max-batch", "16", "--timing-cache", str(cache), "--quiet"])
        out = capsys.readouterr().out
        assert code == 0 and "engine" in out and "fastest at 8" in out
        assert cache.stat().st_size > 0 and (tmp_path / name).with_suffix(".json").is_file()
