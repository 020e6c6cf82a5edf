"""The CUDA batch pipeline's promises, checked without a GPU: the real
BatchPipeline (and wbc_edge.backends.cuda) run over the runtime stand-in
(fake_cudart.py), whose streams run queued work only when synchronized, so
that a buffer reused too early is caught.

- no host buffer is written again before the copy from it has run;
- no thread waits for a slot while holding one (threads cannot deadlock);
- results come in job order, whatever order the GPU finishes in;
- an error in one batch surfaces and leaves nothing held or leaked;
- close() frees everything, from any thread, after the work in progress.
"""

from __future__ import annotations

import inspect
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tests.backends.fake_cudart import FUNCTIONS, FakeCudart, KernelFault, cudaError_t
from wbc_edge.backends import cuda
from wbc_edge.backends.cuda_pipeline import BatchPipeline

pytestmark = pytest.mark.pipeline

WIDTH = 4  # inputs: uint8 [n, 4]; outputs: float32 [n, 2] = (row sum, first value)


def _launch(fake: FakeCudart, fault_at: int | None = None, counts: list | None = None, before=None):
    """A launch step whose kernel computes (sum, first) per row from device memory."""
    launched = []

    def launch(slot, n):
        launched.append(n)
        if counts is not None:
            counts.append(n)
        number = len(launched)

        def kernel():
            if before is not None:
                before()
            if number == fault_at:
                raise KernelFault(cudaError_t.cudaErrorIllegalAddress)
            x = fake.device_bytes(slot.device_input.ptr, n * WIDTH).reshape(n, WIDTH)
            y = fake.device_bytes(slot.device_output.ptr, n * 8).view(np.float32).reshape(n, 2)
            y[:, 0] = x.sum(1)
            y[:, 1] = x[:, 0]

        fake.launch(slot.stream.handle, kernel, uses=(slot.device_input.ptr, slot.device_output.ptr))

    return launch


def _pipeline(fake, slots=2, max_batch=8, min_batch=1, device=0, **launch) -> BatchPipeline:
    return BatchPipeline(_launch(fake, **launch), max_batch=max_batch, min_batch=min_batch, input_shape=(WIDTH,),
                         input_dtype=np.uint8, output_shape=(2,), output_dtype=np.float32, slots=slots,
                         device=device)


def _job(values: np.ndarray | None, count: int | None = None):
    """A batch job filling ``values`` (uint8 [n, WIDTH]) into the pipeline's memory."""
    def fill(out):
        if values is None:
            return None
        out[:len(values)] = values
        return out[:len(values)]

    return SimpleNamespace(count=len(values) if count is None else count, fill=fill, values=values)


def _rows(rng, n: int) -> np.ndarray:
    return rng.integers(0, 50, (n, WIDTH), dtype=np.uint8)


def _expected(values: np.ndarray) -> np.ndarray:
    return np.stack([values.sum(1, dtype=np.int64), values[:, 0]], 1).astype(np.float32)


@pytest.mark.parametrize("progress", ["lazy", "random", "eager"])
def test_results_in_job_order_and_nothing_left(fake_cudart, progress):
    fake_cudart.progress = progress
    rng = np.random.default_rng(1)
    jobs = [_job(_rows(rng, n)) for n in (3, 5, 1, 8, 2, 7, 4, 6)]
    jobs.insert(2, SimpleNamespace(count=0, fill=None, values=None))   # nothing to run
    jobs.insert(5, _job(None, count=3))                                  # fill finds nothing to run
    pipeline = _pipeline(fake_cudart, slots=3)
    results = list(pipeline.map(jobs))
    assert [job for job, _ in results] == jobs
    for job, outputs in results:
        if job.values is None:
            assert outputs is None
        else:
            np.testing.assert_array_equal(outputs, _expected(job.values))
    pipeline.close()
    assert fake_cudart.hazards == []
    assert fake_cudart.live() == {}


def test_host_buffer_not_rewritten_before_its_copy_ran(fake_cudart):
    """With lazy streams nothing runs until it is waited for: a slot handed to
    the next fill before its copies ran would be caught by the stand-in."""
    rng = np.random.default_rng(2)
    jobs = [_job(_rows(rng, 8)) for _ in range(12)]
    with_pipeline = _pipeline(fake_cudart, slots=2)
    got = [outputs for _, outputs in with_pipeline.map(jobs)]
    assert fake_cudart.hazards == []
    for job, outputs in zip(jobs, got):
        np.testing.assert_array_equal(outputs, _expected(job.values))
    copies = [c for c in fake_cudart.calls if c[0] == "cudaMemcpyAsync"]
    assert len(copies) == 2 * len(jobs)

    # The check can fail: a pipeline that gives a slot back without waiting for its event is caught.
    with_pipeline.close()
    broken = _pipeline(fake_cudart, slots=2)
    original = cuda.Event.synchronize
    cuda.Event.synchronize = lambda self: None
    try:
        bad = [outputs for _, outputs in broken.map(jobs[:4])]
    finally:
        cuda.Event.synchronize = original
    assert np.isnan(bad[0]).any()  # read before the device-to-host copy ran
    broken.close()  # the queued copies run now, and find their source rewritten
    assert any("overwritten after the copy from it was queued" in h for h in fake_cudart.hazards)


class _WatchedCondition(threading.Condition):
    """The pipeline's condition, checking that no thread waits while holding a slot."""

    def __init__(self, pipeline: BatchPipeline):
        super().__init__()
        self.pipeline, self.waits, self.violations = pipeline, 0, []

    def wait(self, timeout=None):
        me = threading.get_ident()
        held = [b.slot.index for b in self.pipeline._busy.values() if b is not None and b.owner == me]
        if held:
            self.violations.append(f"thread {me} waits while holding slots {held}")
        self.waits += 1
        return super().wait(timeout)


def _run_threads(pipeline, jobs_per_thread, first_fill=None, timeout=20.0):
    results, errors = {}, []

    def worker(index, jobs):
        try:
            if first_fill is not None:
                jobs = list(jobs)
                fill = jobs[0].fill
                jobs[0] = SimpleNamespace(count=jobs[0].count, values=jobs[0].values,
                                          fill=lambda out, fill=fill: (first_fill(index), fill(out))[1])
            results[index] = [(job.values, outputs) for job, outputs in pipeline.map(jobs)]
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i, jobs), daemon=True) for i, jobs in enumerate(jobs_per_thread)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "threads sharing the pipeline are deadlocked"
    assert not errors, errors[0]
    return results


def test_threads_sharing_a_pipeline_cannot_deadlock(fake_cudart):
    """Two threads each take one of the two slots (a barrier in their first
    fill), then both need another: waiting for one while holding one would
    hang both forever. Each must finish its own batch instead."""
    rng = np.random.default_rng(3)
    pipeline = _pipeline(fake_cudart, slots=2)
    watched = pipeline._cond = _WatchedCondition(pipeline)
    barrier = threading.Barrier(2, timeout=10)
    jobs = [[_job(_rows(rng, n)) for n in (4, 8, 3, 8, 1, 6)] for _ in range(2)]
    results = _run_threads(pipeline, jobs, first_fill=lambda index: barrier.wait())
    for index in (0, 1):
        for values, outputs in results[index]:
            np.testing.assert_array_equal(outputs, _expected(values))
    assert watched.violations == []
    pipeline.close()
    assert fake_cudart.hazards == [] and fake_cudart.live() == {}


def test_a_thread_waits_for_a_slot_only_holding_none(fake_cudart):
    """One slot, three threads: they must wait for it (so waits happen), and
    never while holding it."""
    rng = np.random.default_rng(4)
    pipeline = _pipeline(fake_cudart, slots=1)
    watched = pipeline._cond = _WatchedCondition(pipeline)
    jobs = [[_job(_rows(rng, 5)) for _ in range(5)] for _ in range(3)]
    results = _run_threads(pipeline, jobs, first_fill=lambda index: time.sleep(0.05))
    assert watched.waits > 0 and watched.violations == []
    assert all(len(results[i]) == 5 for i in range(3))
    for values, outputs in (pair for i in range(3) for pair in results[i]):
        np.testing.assert_array_equal(outputs, _expected(values))
    # A fill that runs another batch while its own holds the only slot is told so instead of hanging.
    def nested(out):
        return pipeline.run(jobs[1][0].values)

    with pytest.raises(RuntimeError, match="held by this thread"):
        list(pipeline.map([SimpleNamespace(count=2, fill=nested)]))
    np.testing.assert_array_equal(pipeline.run(jobs[1][0].values), _expected(jobs[1][0].values))
    pipeline.close()
    assert fake_cudart.live() == {}


def test_an_error_in_one_batch_surfaces_and_frees_everything(fake_cudart):
    rng = np.random.default_rng(5)
    pipeline = _pipeline(fake_cudart, slots=2, fault_at=3)
    jobs = [_job(_rows(rng, 4)) for _ in range(6)]
    got = []
    with pytest.raises(cuda.CudaError, match="cudaErrorIllegalAddress"):
        for _, outputs in pipeline.map(jobs):
            got.append(outputs)
    assert len(got) == 2  # the batches before the failing one were answered
    assert pipeline._busy == {} and fake_cudart.pending() == 0

    # A failing fill, and a failing copy: each surfaces, and no slot stays held.
    def bad_fill(out):
        raise ValueError("cannot preprocess")

    with pytest.raises(ValueError, match="cannot preprocess"):
        list(pipeline.map([jobs[0], SimpleNamespace(count=2, fill=bad_fill, values=None), jobs[1]]))
    assert pipeline._busy == {}
    fake_cudart.fail("cudaMemcpyAsync", cudaError_t.cudaErrorInvalidValue, after=3)
    with pytest.raises(cuda.CudaError, match="cudaMemcpyAsync"):
        list(pipeline.map(jobs))
    assert pipeline._busy == {}
    # a consumer that stops early gives its slots back too
    run = pipeline.map(jobs)
    next(run)
    run.close()
    assert pipeline._busy == {}

    # The pipeline still works, and closing it frees every allocation, stream and event.
    results = list(pipeline.map(jobs[:2]))
    np.testing.assert_array_equal(results[1][1], _expected(jobs[1].values))
    pipeline.close()
    assert fake_cudart.live() == {} and fake_cudart.hazards == []


def test_close_frees_everything_from_another_thread_and_device(fake_cudart):
    """A pipeline on GPU 1, closed by a thread whose current device is GPU 0,
    while another run is suspended holding a slot: all is freed, on GPU 1."""
    rng = np.random.default_rng(6)
    pipeline = _pipeline(fake_cudart, slots=2, device=1)
    before = fake_cudart.live()
    assert before == {"host": 4, "device": 4, "stream": 2, "event": 2}
    jobs = [_job(_rows(rng, 3)) for _ in range(4)]
    suspended = pipeline.map(jobs)
    next(suspended)
    closer = threading.Thread(target=pipeline.close)
    closer.start()
    closer.join(10)
    assert not closer.is_alive()
    assert fake_cudart.live() == {} and fake_cudart.hazards == []
    with pytest.raises(RuntimeError, match="closed"):
        list(suspended)
    pipeline.close()  # idempotent


def test_close_waits_for_a_collect_in_progress(fake_cudart):
    rng = np.random.default_rng(7)
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.3)

    pipeline = _pipeline(fake_cudart, slots=2, before=slow)
    job = _job(_rows(rng, 6))
    result = {}
    worker = threading.Thread(target=lambda: result.update(out=list(pipeline.map([job]))))
    worker.start()
    assert started.wait(10)
    pipeline.close()  # the worker is inside its collect: close waits for it
    worker.join(10)
    np.testing.assert_array_equal(result["out"][0][1], _expected(job.values))
    assert fake_cudart.live() == {} and fake_cudart.hazards == []


def test_batches_below_the_minimum_are_padded(fake_cudart):
    """An engine built with min batch 4 gets at least 4 rows; only the real rows come back."""
    rng = np.random.default_rng(8)
    counts = []
    pipeline = _pipeline(fake_cudart, min_batch=4, counts=counts)
    jobs = [_job(_rows(rng, n)) for n in (1, 3, 5)]
    for job, outputs in pipeline.map(jobs):
        assert outputs.shape == (len(job.values), 2)
        np.testing.assert_array_equal(outputs, _expected(job.values))
    assert counts == [4, 4, 5]
    copies = [c[1][2] for c in fake_cudart.calls if c[0] == "cudaMemcpyAsync"]
    assert copies == [4 * WIDTH, 1 * 8, 4 * WIDTH, 3 * 8, 5 * WIDTH, 5 * 8]  # in: padded rows; out: real rows
    pipeline.close()


def test_events_sleep_instead_of_spinning(fake_cudart):
    pipeline = _pipeline(fake_cudart, slots=2)
    flags = [state.flags for state in fake_cudart.events.values()]
    assert len(flags) == 2
    assert all(f & FakeCudart.cudaEventBlockingSync and f & FakeCudart.cudaEventDisableTiming for f in flags)
    pipeline.close()


def test_pinned_views_keep_their_memory_alive(fake_cudart):
    buffer = cuda.PinnedBuffer((4, WIDTH), np.uint8)
    view = buffer.array[1:3]
    view[...] = 7
    buffer.free()
    assert fake_cudart.live() == {"host": 1}  # the view still reads real memory
    assert (view == 7).all()
    del view
    assert fake_cudart.live() == {}
    other = cuda.PinnedBuffer((2,), np.float32)
    other.free()  # no view left: freed at once
    assert fake_cudart.live() == {} and not any(c[0] == "cudaFreeHost" and c[1][0] == 0 for c in fake_cudart.calls)


def test_no_driver_and_an_old_driver_are_told_apart(monkeypatch):
    fake = FakeCudart(driver_version=0)
    monkeypatch.setattr(cuda, "_cudart", fake)
    with pytest.raises(cuda.NoDriverError, match="no NVIDIA driver is installed"):
        cuda.device_count()
    monkeypatch.setattr(cuda, "_cudart", FakeCudart(driver_version=12080, runtime_version=13050))
    with pytest.raises(cuda.CudaError, match=r"supports CUDA 12\.8 .*CUDA 13\.5.*cuda-bindings==12\.\*.*tensorrt-cu12"):
        cuda.device_count()
    monkeypatch.setattr(cuda, "_cudart", FakeCudart(devices=3))
    assert cuda.device_count() == 3


def test_the_stand_in_has_cuda_python_s_signatures():
    """Same names and parameters as the real cuda.bindings.runtime, for every
    function the stand-in offers and every one the CUDA code calls."""
    real = pytest.importorskip("cuda.bindings.runtime")
    from tests.tensorrt_api_usage import CUDA_FILES, cuda_runtime_calls

    fake = FakeCudart()
    assert set(cuda_runtime_calls(CUDA_FILES)) <= set(FUNCTIONS)
    different = {}
    for name in FUNCTIONS:
        mine = list(inspect.signature(getattr(fake, name)).parameters)
        theirs = list(inspect.signature(getattr(real, name)).parameters)
        if mine != theirs:
            different[name] = (mine, theirs)
    assert different == {}
    for name in ("cudaStreamNonBlocking", "cudaEventDisableTiming", "cudaEventBlockingSync"):
        assert int(getattr(fake, name)) == int(getattr(real, name))
    for member in cudaError_t:
        assert int(getattr(real.cudaError_t, member.name)) == member.value
