"""TensorRTRunner's own logic, run without a GPU or TensorRT: the real runner
over the CUDA runtime stand-in (fake_cudart.py) and a TensorRT stand-in
(fake_tensorrt.py) whose engine computes ``mean(image) + column``.

run_batches (fills straight into pinned memory, overlapping the GPU, results
in order), padding below the profile's minimum, one logger per TensorRT
module, errors reported per call, one optimization profile per slot, CUDA
graphs and their fallback, and a close that frees everything.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.backends.fake_tensorrt import make_tensorrt
from wbc_edge.backends import cuda
from wbc_edge.backends import tensorrt as trt_backend
from wbc_edge.backends.base import BatchJob
from wbc_edge.backends.tensorrt_compat import EngineRecord
from wbc_edge.errors import ModelMismatchError, WbcEdgeError
from wbc_edge.export.build_engine import engine_metadata
from wbc_edge.metadata import ModelMetadata

pytestmark = pytest.mark.pipeline

MODELS = Path(__file__).resolve().parents[2] / "wbc_edge" / "models"
META = ModelMetadata.load(MODELS / "default.fp32.json")
SHAPE = (*META.input_size, 3)
OUTPUTS = META.num_outputs


@pytest.fixture()
def engine(tmp_path, fake_cudart, monkeypatch):
    """make(**profile) -> (engine path, fake tensorrt module), the module installed as TensorRT."""
    def make(plan: bytes = b"plan", min_batch=1, opt_batch=4, max_batch=8, profiles=2, **options):
        trt = make_tensorrt(fake_cudart, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                            profiles=profiles, height=SHAPE[0], width=SHAPE[1], outputs=OUTPUTS, **options)
        monkeypatch.setattr(trt_backend, "import_tensorrt", lambda runtime="full": trt)
        path = tmp_path / "cells.engine"
        path.write_bytes(plan)
        record = EngineRecord(version=trt.__version__, gpu_name="Fake GPU", compute_capability="8.9",
                              min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, profiles=profiles,
                              engine_sha256=hashlib.sha256(plan).hexdigest())
        onnx = MODELS / "default.fp32.onnx"
        engine_metadata(META, onnx, record).save(path.with_suffix(".json"))
        return path, trt

    return make


def _images(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _expected(images: np.ndarray, outputs: int = OUTPUTS) -> np.ndarray:
    return (images.reshape(len(images), -1).mean(1, dtype=np.float64)[:, None] + np.arange(outputs)).astype(np.float32)


def _job(images: np.ndarray | None, count: int | None = None, log: list | None = None, own: bool = False):
    def fill(out):
        if log is not None:
            log.append(out)
        if images is None:
            return None
        if own or out is None:
            return images.copy()
        out[:len(images)] = images
        return out[:len(images)]

    return BatchJob(len(images) if count is None else count, fill, context=images)


def test_run_batches_fills_pinned_memory_and_answers_in_order(engine, fake_cudart):
    path, trt = engine()
    rng = np.random.default_rng(0)
    given = []
    jobs = [_job(_images(rng, 3), log=given), _job(None, count=2, log=given), BatchJob(0, None),
            _job(_images(rng, 8), log=given), _job(_images(rng, 2), count=5, log=given),  # fewer rows than count
            _job(_images(rng, 4), own=True, log=given),                                   # fills its own array
            _job(_images(rng, 19), log=given),                                            # over max: host, split
            _job(_images(rng, 1), log=given)]
    with trt_backend.TensorRTRunner(path) as runner:
        assert runner.fills_input_memory
        for name in ("reserve", "submit", "collect", "release", "pipeline"):
            assert not hasattr(runner, name)  # the batch scheduling is the runner's own business
        results = list(runner.run_batches(iter(jobs)))
        assert [job for job, _ in results] == jobs
        for job, outputs in results:
            if job.context is None:
                assert outputs is None
                continue
            assert set(outputs) == set(META.output_columns)
            assert outputs["logits"].shape == (len(job.context), META.num_classes)
            rows = np.concatenate([outputs[name] for name in META.output_columns], 1)
            np.testing.assert_allclose(rows, _expected(job.context), rtol=1e-6)
        pinned = [out for out in given if out is not None]
        assert len(given) == len(pinned) + 1  # only the job over max_batch was filled on the host
        for out in pinned:  # every other fill wrote straight into pinned memory the stand-in allocated
            allocation, _ = fake_cudart._find(out.__array_interface__["data"][0], out.nbytes, "host")
            assert allocation.kind == "host"
        # batches of 19 run as 8 + 8 + 3; a partial job runs only its real rows
        assert [n for _, n in trt.executions] == [3, 8, 2, 4, 8, 8, 3, 1]
    assert fake_cudart.live() == {"host": 2}  # the views this test kept hold their pinned memory...
    given.clear()  # (the jobs' fills hold this list)
    del pinned, out
    assert fake_cudart.hazards == [] and fake_cudart.live() == {}  # ...until they go


def test_the_next_batch_is_filled_while_the_gpu_runs_the_previous(engine, fake_cudart):
    path, trt = engine()
    rng = np.random.default_rng(1)
    seen = []  # at each fill: (batches launched, results handed out)
    handed = []

    def job(images):
        def fill(out):
            seen.append((len(trt.executions), len(handed)))
            out[:len(images)] = images
            return out[:len(images)]
        return BatchJob(len(images), fill, context=images)

    with trt_backend.TensorRTRunner(path) as runner:
        for job_, outputs in runner.run_batches(job(_images(rng, 4)) for _ in range(5)):
            handed.append(job_)
            np.testing.assert_allclose(outputs["logits"], _expected(job_.context)[:, :META.num_classes], rtol=1e-6)
    # each job k+1 is filled while job k is on the GPU: launched, not yet answered
    assert seen == [(0, 0), (1, 0), (2, 1), (3, 2), (4, 3)]


def test_infer_pads_below_the_profile_minimum(engine, fake_cudart):
    path, trt = engine(min_batch=4, opt_batch=4)
    rng = np.random.default_rng(2)
    with trt_backend.TensorRTRunner(path) as runner:
        for n in (1, 3, 5, 12):
            images = _images(rng, n)
            got = runner.infer(images)
            assert got.shape == (n, OUTPUTS)
            np.testing.assert_allclose(got, _expected(images), rtol=1e-6)
        assert runner.infer(np.zeros((0, *SHAPE), np.uint8)).shape == (0, OUTPUTS)
    assert [n for _, n in trt.executions] == [4, 4, 5, 8, 4]


def test_every_runtime_gets_the_one_logger_and_runners_close_in_any_order(engine, fake_cudart):
    path, trt = engine()
    images = _images(np.random.default_rng(3), 2)
    for order in ((0, 1), (1, 0)):
        runners = [trt_backend.TensorRTRunner(path), trt_backend.TensorRTRunner(path)]
        runners[order[0]].close()
        survivor = runners[order[1]]
        np.testing.assert_allclose(survivor.infer(images), _expected(images), rtol=1e-6)
        survivor.close()
    logger = trt_backend.shared_logger(trt)
    assert len(trt.loggers) == 4 and all(given is logger for given in trt.loggers)
    assert fake_cudart.live() == {}


def test_a_null_runtime_is_refused_with_tensorrt_s_reason(engine):
    path, _ = engine(runtime_fails=True)
    with pytest.raises(WbcEdgeError, match="could not start its runtime: CUDA initialization failure.*nvidia-smi"):
        trt_backend.TensorRTRunner(path)


def test_errors_are_those_of_the_call_not_earlier_ones(engine, fake_cudart):
    path, trt = engine(plan=b"bad plan")
    trt_backend.shared_logger(trt).log(trt.Severity.ERROR, "an earlier failure of someone else")
    with pytest.raises(ModelMismatchError, match="could not load the engine") as refused:
        trt_backend.TensorRTRunner(path)
    assert "magic tag" in str(refused.value) and "earlier failure" not in str(refused.value)
    assert fake_cudart.live() == {}


def test_each_slot_runs_on_its_own_profile(engine, fake_cudart):
    path, trt = engine(profiles=3)
    rng = np.random.default_rng(4)
    with trt_backend.TensorRTRunner(path, slots=3) as runner:
        assert runner.num_slots == 3
        list(runner.run_batches(_job(_images(rng, 2)) for _ in range(6)))
        assert sorted(context.profile for context in trt.contexts) == [0, 1, 2]
        assert {profile for profile, _ in trt.executions} == {0, 1, 2}
    with pytest.raises(WbcEdgeError, match=r"2 optimization profile\(s\) and 3 slots.*--profiles 3"):
        trt_backend.TensorRTRunner(engine(profiles=2)[0], slots=3)
    with trt_backend.TensorRTRunner(engine(profiles=1)[0]) as single:  # an engine with one profile: one slot
        assert single.num_slots == 1
    assert fake_cudart.live() == {}


def test_cuda_graphs_replay_and_a_failed_capture_falls_back(engine, fake_cudart):
    rng = np.random.default_rng(5)
    images = _images(rng, 4)
    path, _ = engine()
    with trt_backend.TensorRTRunner(path, cuda_graphs=[4]) as runner:
        launches = sum(c[0] == "cudaGraphLaunch" for c in fake_cudart.calls)
        np.testing.assert_allclose(runner.infer(images), _expected(images), rtol=1e-6)
        assert sum(c[0] == "cudaGraphLaunch" for c in fake_cudart.calls) == launches + 1
    assert fake_cudart.live() == {}
    path, _ = engine(capture_fails=True)
    start = len(fake_cudart.calls)
    with pytest.warns(RuntimeWarning, match="cannot be captured in a CUDA graph at batch 4"), \
            trt_backend.TensorRTRunner(path, cuda_graphs=[4]) as runner:
        assert runner.describe()["cuda_graph_batch_sizes"] == [4]
        np.testing.assert_allclose(runner.infer(images), _expected(images), rtol=1e-6)
    assert not any(c[0] in ("cudaGraphLaunch", "cudaGraphInstantiate") for c in fake_cudart.calls[start:])
    assert fake_cudart.live() == {} and fake_cudart.hazards == []


def test_an_error_in_a_batch_surfaces_and_the_runner_goes_on(engine, fake_cudart):
    path, _ = engine()
    rng = np.random.default_rng(6)
    with trt_backend.TensorRTRunner(path) as runner:
        fake_cudart.fail("cudaEventSynchronize", cuda.cudart().cudaError_t.cudaErrorIllegalAddress, after=1)
        with pytest.raises(cuda.CudaError, match="cudaErrorIllegalAddress"):
            list(runner.run_batches(_job(_images(rng, 3)) for _ in range(4)))
        images = _images(rng, 5)
        np.testing.assert_allclose(runner.infer(images), _expected(images), rtol=1e-6)
    assert fake_cudart.live() == {} and fake_cudart.hazards == []


def test_close_on_another_thread_frees_all_on_the_runner_s_gpu(engine, fake_cudart):
    path, trt = engine()
    runner = trt_backend.TensorRTRunner(path, device=1)
    runner.infer(_images(np.random.default_rng(7), 2))
    closer = threading.Thread(target=runner.close)  # a new thread's current device is GPU 0
    closer.start()
    closer.join(10)
    gc.collect()
    assert fake_cudart.live() == {} and fake_cudart.hazards == []
    assert len(trt.contexts) == 0 and len(trt.engines) == 0
    with pytest.raises(RuntimeError, match="closed"):
        runner.infer(np.zeros((1, *SHAPE), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runner.close()  # idempotent
