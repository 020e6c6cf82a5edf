"""What the input size costs: the shipped model's ResNet-18 exported at several
input sizes and run by onnxruntime (FP32, all threads, batch 32) on real cells
preprocessed to each size. The weights are the shipped model's (a ResNet-18
ends in global average pooling, so any size runs; only the cost is measured
here, not the accuracy, which needs a model trained at that size: see
MODEL_CARD.md). The baseline is 224 x 224, the usual ImageNet size.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from benchmarks.workload import tile
from wbc_edge import preprocess_batch

SIZES = (96, 128, 160, 224)
BASELINE_SIZE = 224
BATCH = 32


@pytest.fixture(scope="module")
def onnx_at_size(prototype, tmp_path_factory):
    """size -> an FP32 ONNX of the shipped weights taking ``size x size`` input,
    made by the project's exporter (which verifies it against PyTorch)."""
    from wbc_edge.export.onnx_export import export_checkpoint
    from wbc_edge.training.checkpoint import save_checkpoint

    net, meta = prototype
    folder = tmp_path_factory.mktemp("input-size")
    made = {}

    def get(size: int):
        if size not in made:
            sized = dataclasses.replace(meta, input_size=(size, size))
            checkpoint = save_checkpoint({"model": net.state_dict(), "meta": sized.to_dict()},
                                         folder / f"r18-{size}.pt")
            made[size] = export_checkpoint(checkpoint, folder / f"r18-{size}.onnx").path
        return made[size]

    return get


@pytest.mark.parametrize("size", SIZES, ids=[f"{s}px" for s in SIZES])
def test_onnxruntime_fp32_at_input_size(measure, onnx_at_size, decoded_images, all_threads, size):
    from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner

    cells = preprocess_batch(decoded_images, (size, size))
    images = tile(cells, BATCH)
    with OnnxRuntimeRunner(onnx_at_size(size), num_threads=all_threads) as runner:
        logits = measure(lambda: runner.infer(images), stage="input size",
                         name=f"onnxruntime FP32 at {size}x{size}", backend="onnxruntime", precision="fp32",
                         images=BATCH, batch=BATCH, threads=all_threads, baseline=size == BASELINE_SIZE,
                         note=f"the shipped weights exported for {size}x{size} input; baseline {BASELINE_SIZE}x"
                              f"{BASELINE_SIZE}")
    assert logits.shape == (BATCH, runner.metadata.num_classes) and np.isfinite(logits).all()
