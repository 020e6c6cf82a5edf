"""The benchmark suite's own correctness (cheap; no timing is asserted):
the prototype baseline computes what the SDK computes, the report turns results
into the right table, the GPU script's host-side parts work, and the torch
backend (CPU here, CUDA where present) gives the reference logits."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from benchmarks import report
from benchmarks.prototype import (
    _batchnorm_of,
    _module_name,
    prototype_decode,
    prototype_preprocess,
)
from benchmarks.results import Measurement, load_results, percentile, results_document, write_results
from benchmarks.workload import PBC_ENV, cell_images, link_folder
from wbc_edge import preprocess_batch
from wbc_edge.decode import decode_images
from wbc_edge.models import variant_path

FP32_MODEL = variant_path("fp32")
needs_fp32_model = pytest.mark.skipif(not FP32_MODEL.is_file(),
                                      reason=f"the FP32 model {FP32_MODEL.name} is not in this checkout")
MEAN, STD = (0.8737, 0.7485, 0.7215), (0.1566, 0.1825, 0.0789)


def per_class(sample_paths, count: int) -> list:
    """``count`` sample images of each class."""
    chosen: dict[str, list] = {}
    for path in sample_paths:
        chosen.setdefault(path.parent.name, [])
        if len(chosen[path.parent.name]) < count:
            chosen[path.parent.name].append(path)
    return [p for paths in chosen.values() for p in paths]


# ------------------------------------------------------------ the baseline

def test_prototype_preprocess_equals_sdk_float32_output(cell_images):
    """The preprocessing comparison is fair: the prototype's Pillow + numpy
    path and preprocess_batch(dtype=float32) make the same tensor, bit for bit."""
    images = cell_images[:40]
    expected = prototype_preprocess(images, (128, 128), MEAN, STD)
    assert expected.shape == (40, 3, 128, 128) and expected.dtype == np.float32
    for threads in (1, 2):
        got = preprocess_batch(images, (128, 128), num_threads=threads, dtype=np.float32, mean=MEAN, std=STD)
        assert np.array_equal(got, expected)


def test_prototype_cell_centring_field_equals_the_sdks(cell_images):
    """For a cell-centring model the prototype's numpy finder and Pillow
    resize make the field the C++ preprocessing makes, bit for bit."""
    images = cell_images[:24]
    expected = prototype_preprocess(images, (128, 128), MEAN, STD, policy="cell_center")
    got = preprocess_batch(images, (128, 128), dtype=np.float32, mean=MEAN, std=STD, policy="cell_center")
    assert np.array_equal(got, expected)


def test_prototype_reads_files_like_the_sdk(sample_paths):
    paths = sample_paths[:12]
    from_files = prototype_preprocess(paths, (96, 112), MEAN, STD)
    from_arrays = prototype_preprocess(prototype_decode(paths), (96, 112), MEAN, STD)
    assert np.array_equal(from_files, from_arrays)
    for ours, theirs in zip(decode_images(paths), prototype_decode(paths)):
        assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("node, module, batchnorm", [
    ("/net/conv1/Conv", "conv1", "bn1"),
    ("/net/layer1/layer1.0/conv2/Conv", "layer1.0.conv2", "layer1.0.bn2"),
    ("/net/layer3/layer3.0/downsample/downsample.0/Conv", "layer3.0.downsample.0", "layer3.0.downsample.1"),
])
def test_folded_graph_names_map_to_resnet_modules(node, module, batchnorm):
    assert _module_name(node) == module
    assert _batchnorm_of(module) == batchnorm


def test_folded_graph_name_that_is_no_resnet_conv_is_refused():
    with pytest.raises(ValueError, match="not a ResNet convolution"):
        _batchnorm_of("layer1.0.relu")


@needs_fp32_model
def test_prototype_and_sdk_agree_on_sample_cells(sample_paths):
    """The prototype runs the SDK's very model: its per-image loop gives the
    labels and (uncalibrated) confidences of the SDK's onnxruntime FP32 path."""
    torch = pytest.importorskip("torch", reason="the prototype runs on PyTorch")
    from benchmarks.prototype import PrototypeLoop, load_prototype_model
    from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner
    from wbc_edge.metrics import softmax

    net, meta, source = load_prototype_model(onnx_path=FP32_MODEL)
    assert "rebuilt from" in source
    paths = per_class(sample_paths, 2)
    with OnnxRuntimeRunner(FP32_MODEL) as runner:
        rows = runner.infer(preprocess_batch(decode_images(paths), meta.input_size, policy=meta.resize_policy))
    probabilities = softmax(rows[:, runner.metadata.output_columns["logits"]], 1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 eager with several threads crawls on a busy machine
    try:
        labels, confidences = zip(*PrototypeLoop(net, meta).run(paths))
    finally:
        torch.set_num_threads(threads)
    assert list(labels) == [meta.classes[i] for i in probabilities.argmax(1)]
    # torch eager and onnxruntime differ by about 1e-3 in a logit here (float32 summation order)
    np.testing.assert_allclose(confidences, probabilities.max(1), atol=1e-3)


# ------------------------------------------------------------- the workload

def test_workload_repeats_the_sample_and_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv(PBC_ENV, raising=False)
    images = cell_images(300)
    assert len(images.paths) == 300 and images.distinct == 208
    assert "repeated" in images.note and PBC_ENV in images.note
    assert all(p.is_file() for p in images.paths)
    folder = link_folder(images, tmp_path / "cells")
    links = sorted(folder.iterdir())
    assert len(links) == 300 and links[0].resolve() == images.paths[0].resolve()


def test_workload_uses_the_full_set_when_named(monkeypatch, tmp_path, sample_dir):
    monkeypatch.setenv(PBC_ENV, str(sample_dir))
    images = cell_images(50)
    assert images.distinct == 50 and "repeated" not in images.note and str(sample_dir) in images.source


# ------------------------------------------------------------ results, report

def measurement(stage, name, seconds, images=100, baseline=False, **fields):
    defaults = {"backend": "x", "precision": "fp32", "batch": None, "threads": 1}
    return Measurement(stage=stage, name=name, images_per_round=images, times_s=list(seconds),
                       baseline=baseline, **{**defaults, **fields})


def test_percentile_matches_numpy():
    values = list(np.random.default_rng(0).random(37))
    for q in (0, 25, 50, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_measurement_refuses_unknown_stage_and_empty_times():
    with pytest.raises(ValueError, match="stage"):
        measurement("training", "x", [1.0])
    with pytest.raises(ValueError, match="round time"):
        measurement("inference", "x", [])


@pytest.fixture
def results_file(tmp_path):
    machine = {"cpu": "Test CPU", "cores_used": 2, "date": "2025-01-01T00:00:00+00:00", "libraries": {"numpy": "2"},
               "git": {"commit": "abc", "dirty": False}}
    document = results_document([
        measurement("end-to-end", "prototype loop", [2.0, 1.0, 1.0], baseline=True),
        measurement("end-to-end", "Classifier.predict_stream (default CPU configuration)", [0.25, 0.25, 0.3],
                    extra={"label_agreement_with_prototype": 0.995}),
        measurement("preprocess", "prototype: Pillow + numpy", [1.0], baseline=True),
        measurement("preprocess", "wbc_edge.preprocess_batch uint8 (1 thread)", [0.1]),
        measurement("inference", "onnxruntime fp32", [0.010, 0.011, 0.012, 0.050], images=8, batch=8),
    ], mode="full", command="python -m pytest benchmarks/ --benchmark-only", machine=machine)
    return write_results(document, tmp_path / "run.json")


def test_report_table_speedups_and_targets(results_file, tmp_path):
    text = report.render_markdown([(results_file, load_results(results_file))])
    lines = text.splitlines()
    header = lines[0]
    for column in ("stage", "backend", "precision", "batch", "images/s", "speed-up vs baseline", "machine"):
        assert column in header
    e2e = next(line for line in lines if "predict_stream" in line)
    assert "| 400 |" in e2e and "**4.0x**" in e2e  # 100 images / 0.25 s median; prototype 100 / 1.0 s
    pre = next(line for line in lines if "preprocess_batch" in line)
    assert "**10.0x**" in pre
    inference = next(line for line in lines if "onnxruntime fp32" in line)
    assert "n/a" in inference  # no inference baseline in this run: no invented ratio
    assert "11.50 / " in inference  # p50 of 10, 11, 12, 50 ms
    assert any("4.0x** (meets the target of 3x, aiming at 6x)" in line for line in lines)
    assert any("10.0x** (meets the target of 8x)" in line for line in lines)
    assert "python -m pytest benchmarks/ --benchmark-only" in text and "Test CPU, 2 cores" in text
    assert "Classifier.predict_stream (default CPU configuration): 99.5%" in text


def test_report_command_writes_table_and_chart(results_file, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib (pip install 'wbc-edge[plots]')")
    table, chart = tmp_path / "table.md", tmp_path / "chart.png"
    assert report.main([str(results_file), "--markdown", str(table), "--png", str(chart)]) == 0
    assert table.read_text().startswith("| stage |")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speed-up" in capsys.readouterr().out


def test_report_refuses_a_file_that_is_no_results(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a wbc-edge benchmark results file"):
        load_results(other)
    with pytest.raises(SystemExit):
        report.main([str(other), "--no-png"])


# ---------------------------------------------------------------- GPU script

def test_gpu_script_options():
    from benchmarks import gpu

    args = gpu.parse_args(["--quick", "--batches", "1,4", "--device", "cpu"])
    assert args.batches == (1, 4) and args.images == 64 and args.rounds == 1
    assert gpu.parse_args([]).batches == gpu.FULL_BATCHES
    with pytest.raises(SystemExit):
        gpu.parse_args(["--batches", "0,2"])
    cells = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)
    tiled = gpu.tile(cells, 7)
    assert tiled.shape == (7, 2, 2, 3) and np.array_equal(tiled[3], cells[0])


def test_gpu_script_says_when_there_is_no_gpu(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    from benchmarks import gpu

    assert gpu.main(["--quick"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_concurrent_timing_counts_every_call():
    from benchmarks import gpu

    calls = []
    lock = threading.Lock()

    def infer(batch):
        with lock:
            calls.append(len(batch))

    times = gpu.concurrent_images_per_s(infer, np.zeros((4, 1, 1, 3), np.uint8), callers=2, calls=3)
    assert calls == [4] * 6 and len(times) == 6


# ------------------------------------------------------------ torch backend

@pytest.fixture(scope="module")
def sample_batch(sample_paths):
    return preprocess_batch(decode_images(per_class(sample_paths, 2)), (128, 128))


def test_torch_backend_cpu_matches_onnxruntime(shipped_fp32_checkpoint, sample_batch):
    from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner
    from wbc_edge.backends.torch import TorchRunner

    with OnnxRuntimeRunner(FP32_MODEL) as reference:
        expected = reference.infer(sample_batch)[:, reference.metadata.output_columns["logits"]]
    for channels_last in (True, False):
        with TorchRunner(shipped_fp32_checkpoint, device="cpu", channels_last=channels_last) as runner:
            assert runner.half is False and runner.describe()["device"] == "cpu"
            shared = slice(0, expected.shape[1])  # the class logits (the outputs after them differ by model)
            np.testing.assert_allclose(runner.infer(sample_batch)[:, shared], expected, atol=1e-3, rtol=1e-3)
            strided = np.ascontiguousarray(sample_batch[::-1])[::-1]  # a non-contiguous view
            np.testing.assert_allclose(runner.infer(strided)[:, shared], expected, atol=1e-3, rtol=1e-3)


def test_torch_backend_refuses_devices_it_cannot_use(shipped_fp32_checkpoint):
    import torch

    from wbc_edge.backends.torch import TorchRunner
    from wbc_edge.errors import WbcEdgeError

    with pytest.raises(WbcEdgeError, match="not a device PyTorch knows"):
        TorchRunner(shipped_fp32_checkpoint, device="gpu0")
    with pytest.raises(WbcEdgeError, match="streams"):
        TorchRunner(shipped_fp32_checkpoint, streams=0)
    if not torch.cuda.is_available():
        with pytest.raises(WbcEdgeError, match="no CUDA GPU"):
            TorchRunner(shipped_fp32_checkpoint, device="cuda")


@pytest.mark.gpu
def test_torch_backend_cuda_fp16_pinned_streams(shipped_fp32_checkpoint, sample_batch):
    """On a GPU: FP16 + channels-last + pinned staging give the FP32 CPU
    labels; concurrent calls on the two streams give what serial calls give."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (PyTorch sees none here)")
    from wbc_edge.backends.torch import TorchRunner

    with TorchRunner(shipped_fp32_checkpoint, device="cpu") as cpu:
        expected = cpu.infer(sample_batch)
    with TorchRunner(shipped_fp32_checkpoint, device="cuda") as gpu:
        assert gpu.half and gpu.describe()["streams"] == 2
        got = gpu.infer(sample_batch)
        np.testing.assert_allclose(got, expected, atol=0.1, rtol=0.05)
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9
        larger = np.concatenate([sample_batch] * 5)  # grows the pinned buffers
        # Other batch sizes may get other cuDNN kernels: equal within FP16 rounding.
        np.testing.assert_allclose(gpu.infer(larger)[:len(sample_batch)], got, atol=2e-2, rtol=1e-2)
        results = {}

        def call(key, batch):
            results[key] = gpu.infer(batch)

        threads = [threading.Thread(target=call, args=(i, sample_batch[i:] if i else larger)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        np.testing.assert_allclose(results[0], gpu.infer(larger), atol=2e-2, rtol=1e-2)
        for i in range(1, 4):
            np.testing.assert_allclose(results[i], got[i:], atol=2e-2, rtol=1e-2)


@pytest.mark.gpu
def test_torch_backend_cuda_batch_protocol(shipped_fp32_checkpoint, sample_batch, sample_paths):
    """run_batches on CUDA: jobs filled into pinned memory while the GPU runs
    the previous one give what infer gives, in order; the Classifier labels
    real cells as the CPU does."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (PyTorch sees none here)")
    from wbc_edge.backends.base import BatchJob
    from wbc_edge.backends.torch import TorchRunner
    from wbc_edge.classifier import Classifier

    def job(images):
        return BatchJob(len(images), lambda out: (np.copyto(out, images), out)[1], context=images)

    with TorchRunner(shipped_fp32_checkpoint, device="cuda", streams=2) as gpu:
        assert gpu.fills_input_memory and not hasattr(gpu, "reserve")
        expected = gpu.infer(sample_batch)
        parts = [sample_batch, sample_batch[:4], sample_batch[:1], sample_batch]
        for (done, outputs), images in zip(gpu.run_batches(job(p) for p in parts), parts):
            assert done.context is images
            np.testing.assert_allclose(outputs["logits"], expected[:len(images), :outputs["logits"].shape[1]],
                                       atol=2e-2, rtol=1e-2)
    paths = per_class(sample_paths, 2)
    with Classifier.load(shipped_fp32_checkpoint, backend="torch", device="cpu") as cpu, \
            Classifier.load(shipped_fp32_checkpoint, backend="torch", device="cuda", batch_size=5) as cuda:
        expected_labels = [p.label for p in cpu.predict_batch(paths)]
        labels = [p.label for p in cuda.predict_stream(paths)]
    assert sum(a == b for a, b in zip(labels, expected_labels)) >= 0.9 * len(paths)


def test_results_files_name_repository_paths_relative_to_it(tmp_path):
    from benchmarks.results import REPOSITORY, write_results

    model = REPOSITORY / "wbc_edge" / "models" / "default.fp32.onnx"
    document = {"workload": {"model": str(model), "note": f"rebuilt from {model} (unfolded)"},
                "outside": "/elsewhere/m.onnx"}
    saved = json.loads(write_results(document, tmp_path / "r.json").read_text())
    assert saved["workload"] == {"model": "wbc_edge/models/default.fp32.onnx",
                                 "note": "rebuilt from wbc_edge/models/default.fp32.onnx (unfolded)"}
    assert saved["outside"] == "/elsewhere/m.onnx" and str(REPOSITORY) not in json.dumps(saved)
