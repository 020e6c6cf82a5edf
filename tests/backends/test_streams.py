"""Streams: the CPU engines running several batches at once, each on its share
of the threads (wbc_edge.backends.streams), and the base runner's
``run_batches`` that keeps that many jobs in flight.

The scheduling is checked on a runner whose batches take a known time and
record how many run at once; the engines on the shipped models and real cells
(same rows as one stream); the classifier on real files (same predictions)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from wbc_edge import Classifier
from wbc_edge.backends import load_runner, options_for
from wbc_edge.backends.base import BatchJob, Runner, split_outputs
from wbc_edge.backends.streams import check_streams, default_streams, threads_per_stream
from wbc_edge.errors import WbcEdgeError
from wbc_edge.metadata import ModelMetadata
from wbc_edge.models import shipped_models
from wbc_edge.preprocess import preprocess_batch


class TimedRunner(Runner):
    """Each batch takes ``seconds`` and answers its first pixel as the logit;
    records how many batches were in inference at once."""

    name = "timed"

    def __init__(self, streams: int, seconds: float = 0.05, fail_on: int | None = None):
        super().__init__(ModelMetadata(classes=["a", "b"], input_size=(8, 8), mean=(0.5,) * 3, std=(0.25,) * 3))
        self.streams = streams
        self.seconds = seconds
        self.fail_on = fail_on
        self.running = 0
        self.most_at_once = 0
        self.started: list[int] = []
        self._count_lock = threading.Lock()

    def _infer(self, images: np.ndarray) -> np.ndarray:
        first = int(images[0, 0, 0, 0])
        with self._count_lock:
            self.started.append(first)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.seconds)
            if first == self.fail_on:
                raise RuntimeError(f"batch {first} failed")
            values = images[:, 0, 0, 0].astype(np.float32)
            return np.stack([values, -values], axis=1)
        finally:
            with self._count_lock:
                self.running -= 1


def _jobs(count: int, sizes=(3, 1, 2)):
    """Jobs whose images are all the job's index (pixel values), of varied sizes."""
    for k in range(count):
        n = sizes[k % len(sizes)]
        yield BatchJob(n, lambda out, k=k, n=n: np.full((n, 8, 8, 3), k, np.uint8), context=k)


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_jobs_come_back_in_order_with_their_own_outputs(streams):
    runner = TimedRunner(streams, seconds=0.01)
    results = list(runner.run_batches(_jobs(10)))
    assert [job.context for job, _ in results] == list(range(10))
    for job, outputs in results:
        assert outputs["logits"].shape == (job.count, 2)
        assert (outputs["logits"][:, 0] == job.context).all()


@pytest.mark.parametrize("streams", [1, 2, 4])
def test_at_most_streams_batches_run_at_once_and_all_of_them_do(streams):
    runner = TimedRunner(streams, seconds=0.05)
    list(runner.run_batches(_jobs(8)))
    assert runner.most_at_once == streams


def test_streams_overlap_in_time():
    """Two streams of 0.1 s batches: 6 batches take about 3 slots, not 6."""
    serial, overlapped = TimedRunner(1, 0.1), TimedRunner(2, 0.1)
    t0 = time.perf_counter()
    list(serial.run_batches(_jobs(6)))
    t1 = time.perf_counter()
    list(overlapped.run_batches(_jobs(6)))
    t2 = time.perf_counter()
    assert t2 - t1 < 0.8 * (t1 - t0)


def test_a_job_without_images_gives_none_in_its_place():
    runner = TimedRunner(2, seconds=0.01)
    jobs = [BatchJob(0, lambda out: pytest.fail("an empty job is never filled"), context="empty"),
            BatchJob(2, lambda out: None, context="all refused"),
            *list(_jobs(2))]
    results = list(runner.run_batches(jobs))
    assert [(job.context, outputs is None) for job, outputs in results] == [
        ("empty", True), ("all refused", True), (0, False), (1, False)]


def test_a_failing_batch_raises_at_its_turn_and_nothing_runs_on():
    runner = TimedRunner(2, seconds=0.02, fail_on=3)
    seen = []
    with pytest.raises(RuntimeError, match="batch 3 failed"):
        for job, _ in runner.run_batches(_jobs(10)):
            seen.append(job.context)
    assert seen == [0, 1, 2]
    started = len(runner.started)
    time.sleep(0.1)
    assert len(runner.started) == started <= 5, "no batch may start after the failure surfaced"
    assert runner.running == 0


def test_stopping_early_waits_for_the_running_batches_and_starts_no_more():
    runner = TimedRunner(2, seconds=0.05)
    batches = runner.run_batches(_jobs(20))
    next(batches)
    batches.close()
    assert runner.running == 0, "close() returns once no batch is in inference"
    started = len(runner.started)
    time.sleep(0.15)
    assert len(runner.started) == started <= 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_streams_are_refused_by_name(bad):
    with pytest.raises(WbcEdgeError, match="streams must be a positive integer"):
        check_streams(bad)


def test_threads_are_shared_not_multiplied():
    assert threads_per_stream(2, 2) == (2, 1)
    assert threads_per_stream(8, 2) == (8, 4)
    assert threads_per_stream(3, 2) == (3, 1)  # never more threads than asked for
    with pytest.raises(WbcEdgeError, match="streams=2 with 1 thread: each stream needs a thread"):
        threads_per_stream(1, 2)
    assert default_streams(1) == 1 and default_streams(2) == 1 and default_streams(16) == 1  # measured best


def test_options_give_streams_to_the_cpu_engines_only():
    assert options_for("onnxruntime", None, None, 2)["streams"] == 1
    assert options_for("onnxruntime", None, None, 2, streams=2)["streams"] == 2
    assert options_for("onnxruntime", None, "cpu", 1)["streams"] == 1
    assert "streams" not in options_for("onnxruntime", None, "cuda", None)
    assert options_for("openvino", None, None, 4, streams=3)["streams"] == 3
    assert "streams" not in options_for("torch", None, None, 2)


# --- the engines, on the shipped models and real cells ------------------------

ENGINES = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    not __import__("wbc_edge.installed", fromlist=["has"]).has("openvino"),
    reason="OpenVINO is not installed (pip install 'wbc-edge[openvino]')"))]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WBC_EDGE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fp32_model():
    return shipped_models()["fp32"].path


@pytest.fixture(scope="module")
def cell_batch(cell_images, fp32_model):
    meta = load_runner(fp32_model, backend="onnxruntime", num_threads=1).metadata
    return preprocess_batch(cell_images[:96], meta.input_size, policy=meta.resize_policy)


@pytest.mark.parametrize("engine", ENGINES)
def test_two_streams_give_one_streams_rows(engine, fp32_model, cell_batch):
    """Two streams of one thread each, batches run at once from two threads,
    against one stream of two threads, on the same real cells."""
    extra = {"inference_precision": "f32"} if engine == "openvino" else {}
    with load_runner(fp32_model, backend=engine, num_threads=2, streams=1, **extra) as one, \
            load_runner(fp32_model, backend=engine, num_threads=2, streams=2, **extra) as two:
        assert (one.streams, one.threads_per_stream) == (1, 2)
        assert (two.streams, two.threads_per_stream) == (2, 1)
        assert two.describe()["streams"] == 2
        if engine == "openvino":
            assert int(two.compiled.get_property("NUM_STREAMS")) == 2
        else:  # a session per stream: one session's concurrent runs would share its one thread pool
            sessions = [two._sessions.get() for _ in range(2)]
            assert sessions[0] is not sessions[1]
            for session in sessions:
                two._sessions.put(session)
        expected = split_outputs(one.metadata, one.infer(cell_batch))
        parts = [cell_batch[i:i + 16] for i in range(0, len(cell_batch), 16)]
        jobs = (BatchJob(len(p), lambda out, p=p: p, context=i) for i, p in enumerate(parts))
        results = list(two.run_batches(jobs))
        assert [job.context for job, _ in results] == list(range(len(parts)))
        for name, columns in expected.items():
            got = np.concatenate([outputs[name] for _, outputs in results])
            np.testing.assert_allclose(got, columns, rtol=0, atol=1e-3, err_msg=name)
        got_logits = np.concatenate([outputs["logits"] for _, outputs in results])
        assert (got_logits.argmax(1) == expected["logits"].argmax(1)).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_threads_inferring_at_once_get_what_serial_calls_get(engine, fp32_model, cell_batch):
    extra = {"inference_precision": "f32"} if engine == "openvino" else {}
    with load_runner(fp32_model, backend=engine, num_threads=2, streams=2, **extra) as runner:
        parts = [cell_batch[i:i + 12] for i in range(0, len(cell_batch), 12)]
        serial = [runner.infer(p) for p in parts]
        results: dict[int, np.ndarray] = {}

        def work(i):
            results[i] = runner.infer(parts[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(parts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for i, expected in enumerate(serial):
            np.testing.assert_array_equal(results[i], expected)


# --- the classifier -------------------------------------------------------------

@pytest.fixture(scope="module")
def sample_files(sample_paths):
    return [str(p) for p in sample_paths[:40]]


def test_classifier_streams_give_the_same_predictions(sample_files):
    with Classifier.load(precision="fp32", backend="onnxruntime", streams=1, num_threads=2) as one, \
            Classifier.load(precision="fp32", backend="onnxruntime", streams=2, num_threads=2) as two:
        assert one.describe()["runner"]["streams"] == 1 and two.describe()["runner"]["streams"] == 2
        expected = one.predict_batch(sample_files)
        for got in (two.predict_batch(sample_files), list(two.predict_stream(sample_files, batch_size=8))):
            assert [p.label for p in got] == [p.label for p in expected]
            np.testing.assert_allclose([p.confidence for p in got], [p.confidence for p in expected], atol=1e-4)


def test_a_small_batch_is_split_among_the_streams(sample_files):
    with Classifier.load(precision="fp32", backend="onnxruntime", streams=2, num_threads=2) as classifier:
        sizes = []
        infer = classifier.runner.infer
        classifier.runner.infer = lambda images: (sizes.append(len(images)), infer(images))[1]
        classifier.predict_batch(sample_files[:9])
        assert sorted(sizes) == [4, 5]
        sizes.clear()
        classifier.predict(sample_files[0])
        assert sizes == [1]


def test_streams_for_a_backend_without_them_is_an_error():
    with pytest.raises(WbcEdgeError, match="streams are for the CPU engines"):
        Classifier.load(precision="fp32", backend="onnxruntime", device="cuda", streams=2)


def test_more_streams_than_threads_is_refused_before_any_work(capsys):
    from wbc_edge.cli import main

    assert main(["info", "--threads", "1", "--streams", "2"]) == 2
    assert "streams=2 with 1 thread: each stream needs a thread of its own" in capsys.readouterr().err
    with pytest.raises(WbcEdgeError, match="each stream needs a thread"):
        Classifier.load(precision="fp32", backend="onnxruntime", num_threads=1, streams=2)
