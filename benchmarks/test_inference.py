"""Inference alone, per backend and precision, at several batch sizes: a
runner's ``infer`` on a batch of real preprocessed cells (uint8 NHWC), one call
per round; images/s and per-call latency p50/p99.

The baseline is the prototype's model call: PyTorch eager ResNet-18, FP32 NCHW
float input, batch 1, under ``torch.no_grad()``.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.workload import tile
from wbc_edge import preprocess_batch
from wbc_edge.models import VARIANTS, make_command, variant_path

#: variant -> what the file is for, for the report
ONNX_VARIANTS = {
    "fp32": "FP32 ONNX",
    "fp16": "FP16 ONNX (CPUs emulate FP16)",
    "int8-cpu": "INT8 Q/DQ for CPUs (uint8 activations)",
    "int8-tensorrt": "INT8 Q/DQ made for TensorRT (symmetric), run by onnxruntime on the CPU",
}
assert set(ONNX_VARIANTS) == set(VARIANTS)


@pytest.fixture(scope="module")
def cell_batch(decoded_images, model_metadata) -> np.ndarray:
    """Real cells at the model's input size, uint8 NHWC (tiled up to a batch by workload.tile)."""
    meta = model_metadata
    return preprocess_batch(decoded_images, meta.input_size, policy=meta.resize_policy)


@pytest.fixture(scope="module")
def onnx_runners(all_threads):
    """One onnxruntime session per variant, opened on first use."""
    from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner

    opened = {}

    def get(variant):
        if variant not in opened:
            path = variant_path(variant)
            if not path.is_file():
                pytest.skip(f"{path.name} is not shipped (yet): make it with {make_command(variant)}")
            opened[variant] = OnnxRuntimeRunner(path, num_threads=all_threads)
        return opened[variant]

    yield get
    for runner in opened.values():
        runner.close()


@pytest.fixture(scope="module")
def torch_checkpoint(checkpoint, prototype, tmp_path_factory):
    """The torch backend's checkpoint: the one given, else the prototype's
    weights (rebuilt from the shipped ONNX) saved as a wbc-edge checkpoint."""
    if checkpoint is not None:
        return checkpoint
    from wbc_edge.training.checkpoint import save_checkpoint

    net, meta = prototype
    path = tmp_path_factory.mktemp("torch-backend") / "rebuilt.pt"
    return save_checkpoint({"model": net.state_dict(), "meta": meta.to_dict()}, path)


@pytest.fixture(scope="module")
def torch_runner(torch_checkpoint):
    from wbc_edge.backends.torch import TorchRunner

    with TorchRunner(torch_checkpoint, device="cpu") as runner:
        yield runner


def test_prototype_model_call(measure, prototype, torch_threads, cell_batch):
    """The prototype's per-image model call, the inference baseline."""
    import torch

    from benchmarks.prototype import prototype_inputs

    net, meta = prototype
    x = torch.from_numpy(prototype_inputs(cell_batch[:1], meta))

    def call():
        with torch.no_grad():
            return net(x)

    measure(call, stage="inference", name="prototype: torch eager FP32 NCHW", backend="torch-eager",
            precision="fp32", images=1, batch=1, threads=torch_threads, baseline=True,
            note="the prototype's model call: float32 NCHW input, no_grad, default threads")


@pytest.mark.parametrize("variant", list(ONNX_VARIANTS))
def test_onnxruntime(measure, onnx_runners, all_threads, cell_batch, variant, batch):
    runner = onnx_runners(variant)
    images = tile(cell_batch, batch)
    logits = measure(lambda: runner.infer(images), stage="inference", name=f"onnxruntime {variant}",
                     backend="onnxruntime", precision=variant, images=batch, batch=batch,
                     threads=all_threads, note=ONNX_VARIANTS[variant])
    assert logits.shape == (batch, runner.metadata.num_classes) and np.isfinite(logits).all()


def test_torch_backend(measure, torch_runner, torch_threads, cell_batch, batch):
    images = tile(cell_batch, batch)
    logits = measure(lambda: torch_runner.infer(images), stage="inference", name="torch backend (CPU)",
                     backend="torch", precision="fp32", images=batch, batch=batch,
                     threads=torch_threads, note="TorchRunner: uint8 NHWC in, channels-last, inference_mode")
    assert logits.shape == (batch, torch_runner.metadata.num_classes) and np.isfinite(logits).all()
