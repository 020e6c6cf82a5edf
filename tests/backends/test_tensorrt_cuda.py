"""The TensorRT backend's CUDA layer, run for real on a GPU without TensorRT:
pinned and device buffers, streams, events, graphs, and the double-buffered
batch pipeline (with a PyTorch computation standing in for the engine)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from wbc_edge.errors import WbcEdgeError


def _gpu_status() -> str | None:
    """None when cuda-python sees a GPU, else why not."""
    try:
        from wbc_edge.backends import cuda

        return None if cuda.device_count() > 0 else "no GPU visible"
    except Exception as error:  # MissingDependencyError, CudaError
        return f"no usable GPU through cuda-python ({error})"


_REASON = _gpu_status()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]


@pytest.fixture(scope="module")
def cuda():
    from wbc_edge.backends import cuda

    cuda.set_device(0)
    return cuda


@pytest.fixture(scope="module")
def torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here (the pipeline test computes with it)")
    return torch


def test_device_info(cuda):
    info = cuda.device_info(0)
    assert info.name and info.compute_capability >= (5, 0) and info.total_memory > 2**30
    assert info.driver_version >= 11000 and info.runtime_version >= 11000
    with pytest.raises(WbcEdgeError, match="GPU 999 requested"):
        cuda.device_info(999)
    with pytest.raises(cuda.CudaError, match="cudaSetDevice.*cudaErrorInvalidDevice"):
        cuda.set_device(999)
    cuda.set_device(0)


def test_round_trip_through_device_memory(cuda):
    rng = np.random.default_rng(0)
    shape = (37, 128, 128, 3)
    source, target = cuda.PinnedBuffer(shape, np.uint8), cuda.PinnedBuffer(shape, np.uint8)
    device, stream, done = cuda.DeviceBuffer(source.nbytes), cuda.Stream(), cuda.Event()
    try:
        source.array[...] = rng.integers(0, 256, shape, dtype=np.uint8)
        target.array[...] = 0
        cuda.copy_to_device(device, source, source.nbytes, stream)
        cuda.copy_to_host(target, device, source.nbytes, stream)
        done.record(stream)
        done.synchronize()
        assert done.query()
        np.testing.assert_array_equal(target.array, source.array)
        half = source.nbytes // 2  # partial copies move exactly the bytes asked for
        target.array[...] = 0
        cuda.copy_to_device(device, source, half, stream)
        cuda.copy_to_host(target, device, half, stream)
        stream.synchronize()
        assert np.array_equal(target.array.reshape(-1)[:half], source.array.reshape(-1)[:half])
        assert not target.array.reshape(-1)[half:].any()
        with pytest.raises(ValueError, match="does not fit"):
            cuda.copy_to_device(device, source, source.nbytes + 1, stream)
    finally:
        cuda.release_all([done, stream, device, target, source])
    assert source.ptr == 0 and source.array is None


def test_graph_replays_captured_copies(cuda):
    source, target = cuda.PinnedBuffer((4096,), np.float32), cuda.PinnedBuffer((4096,), np.float32)
    device, stream = cuda.DeviceBuffer(source.nbytes), cuda.Stream()
    graph = None
    try:
        with cuda.GraphCapture(stream) as capture:
            cuda.copy_to_device(device, source, source.nbytes, stream)
            cuda.copy_to_host(target, device, source.nbytes, stream)
        graph = capture.graph
        for value in (1.5, -2.0, 7.25):  # the graph reads the buffers anew each launch
            source.array[...] = value
            graph.launch(stream)
            stream.synchronize()
            assert np.all(target.array == value)
    finally:
        cuda.release_all([graph, stream, device, target, source])


def _torch_launch(torch, height, width):
    """A stand-in engine: per-image channel means, computed with PyTorch on
    the slot's own stream, reading and writing the slot's device buffers."""

    def view(ptr, shape, typestr):
        holder = type("DeviceArray", (), {})()
        holder.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, False),
                                           "version": 3, "stream": None}
        return torch.as_tensor(holder, device="cuda")

    def launch(slot, count):
        with torch.cuda.stream(torch.cuda.ExternalStream(slot.stream.handle)):
            images = view(slot.device_input.ptr, (count, height, width, 3), "|u1")
            logits = view(slot.device_output.ptr, (count, 3), "<f4")
            logits.copy_(images.float().mean(dim=(1, 2)))

    return launch


def _expected(images):
    return images.astype(np.float64).mean(axis=(1, 2)).astype(np.float32)


def test_pipeline_batches_match_numpy(cuda, torch_cuda):
    from wbc_edge.backends.cuda_pipeline import BatchPipeline

    rng = np.random.default_rng(1)
    pipeline = BatchPipeline(_torch_launch(torch_cuda, 32, 24), max_batch=64, input_shape=(32, 24, 3),
                             input_dtype=np.uint8, output_shape=(3,), output_dtype=np.float32, slots=2)
    try:
        for count in (1, 37, 64):  # one, an odd size, the maximum
            images = rng.integers(0, 256, (count, 32, 24, 3), dtype=np.uint8)
            np.testing.assert_allclose(pipeline.run(images), _expected(images), rtol=1e-5)
        # Overlapped: batch k+1 is filled while batch k runs; outputs come back in order.
        batches = [rng.integers(0, 256, (n, 32, 24, 3), dtype=np.uint8) for n in (5, 64, 1, 33, 17, 64, 2)]
        jobs = [SimpleNamespace(count=len(b), fill=lambda out, b=b: (np.copyto(out, b), out)[1]) for b in batches]
        for (job, got), images in zip(pipeline.map(jobs), batches):
            assert job.count == len(images)
            np.testing.assert_allclose(got, _expected(images), rtol=1e-5)
        with pytest.raises(ValueError, match="0 to 64"):
            pipeline.run(np.zeros((65, 32, 24, 3), np.uint8))
    finally:
        pipeline.close()
    with pytest.raises(RuntimeError, match="closed"):
        pipeline.run(np.zeros((1, 32, 24, 3), np.uint8))


def test_pipeline_threads_share_slots(cuda, torch_cuda):
    from wbc_edge.backends.cuda_pipeline import BatchPipeline

    pipeline = BatchPipeline(_torch_launch(torch_cuda, 16, 16), max_batch=32, input_shape=(16, 16, 3),
                             input_dtype=np.uint8, output_shape=(3,), output_dtype=np.float32, slots=2)
    failures = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(25):
                images = rng.integers(0, 256, (int(rng.integers(1, 33)), 16, 16, 3), dtype=np.uint8)
                np.testing.assert_allclose(pipeline.run(images), _expected(images), rtol=1e-5)
        except Exception as error:  # reported below: an assert in a thread does not fail the test
            failures.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]  # 4 threads, 2 slots
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        pipeline.close()
    assert not failures, failures[0]


def test_no_device_memory_leak_over_many_pipelines(cuda):
    from wbc_edge.backends.cuda_pipeline import BatchPipeline

    def cycle():
        pipeline = BatchPipeline(lambda slot, count: None, max_batch=256, input_shape=(128, 128, 3),
                                 input_dtype=np.uint8, output_shape=(8,), output_dtype=np.float32)
        try:
            for count in (1, 255, 256):
                pipeline.run(np.zeros((count, 128, 128, 3), np.uint8))
        finally:
            pipeline.close()

    cycle()  # the first use may set up CUDA's own state
    free_before, _ = cuda.memory_info()
    for _ in range(20):  # each holds 2 x 256 x 48 KiB of device memory while open
        cycle()
    free_after, _ = cuda.memory_info()
    assert free_before - free_after < 2 * 2**20
