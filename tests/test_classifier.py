"""Classifier on real cell images: every input form, order, streaming,
threads, and agreement with a direct runner + preprocessing + softmax."""

from __future__ import annotations

import collections
import io
import random
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE_DIR, sample_rows
from wbc_edge import Classifier, Prediction, preprocess_batch
from wbc_edge.backends.base import split_outputs
from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner
from wbc_edge.decode import decode_image
from wbc_edge.metrics import softmax


@pytest.fixture(scope="module")
def classifier():
    # onnxruntime named: these tests check the classifier against a direct OnnxRuntimeRunner
    # (auto may pick openvino on this CPU; tests/backends/test_openvino.py covers that path)
    with Classifier.load(batch_size=16, backend="onnxruntime") as c:
        yield c


@pytest.fixture(scope="module")
def test_split():
    rows = sample_rows("test")
    return [SAMPLE_DIR / r["path"] for r in rows], [r["label"] for r in rows]


@pytest.fixture(scope="module")
def one_per_class():
    seen, paths = set(), []
    for r in sample_rows("test"):
        if r["label"] not in seen:
            seen.add(r["label"])
            paths.append(SAMPLE_DIR / r["path"])
    return paths


@pytest.fixture(scope="module")
def test_predictions(classifier, test_split):
    return classifier.predict_batch(test_split[0])


def probability_matrix(predictions, classes):
    return np.array([[p.probabilities[c] for c in classes] for p in predictions])


def test_matches_direct_runner_preprocess_softmax(classifier, test_split, test_predictions):
    """The reference: the same model file run by OnnxRuntimeRunner on
    preprocess_batch output, softmax(logits / T) by the training metrics."""
    paths, _ = test_split
    meta = classifier.metadata
    with OnnxRuntimeRunner(classifier.model_path) as runner:
        images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        batch = preprocess_batch(images, meta.input_size, policy=meta.resize_policy)
        expected = softmax(runner.infer(batch)[:, meta.output_columns["logits"]], meta.temperature)
    predictions = test_predictions
    got = probability_matrix(predictions, classifier.classes)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [p.label for p in predictions] == [meta.classes[i] for i in expected.argmax(1)]
    for p in predictions:
        assert p.confidence == max(p.probabilities.values())
        assert abs(sum(p.probabilities.values()) - 1) < 1e-9
        assert list(p.probabilities) == classifier.classes


def test_accuracy_on_test_split_sample_beats_chance(classifier, test_split, test_predictions):
    paths, labels = test_split
    predicted = [p.label for p in test_predictions]
    accuracy = np.mean([a == b for a, b in zip(predicted, labels)])
    chance = 1 / len(classifier.classes)
    # Any trained model does far better than chance; the number itself depends on
    # the shipped model's version, so it is not pinned here.
    assert accuracy > 3 * chance, f"accuracy {accuracy:.3f} on {len(paths)} test-split cells"


def test_every_input_form_gives_the_same_answer(classifier, one_per_class):
    reference = classifier.predict_batch(one_per_class)
    arrays = [decode_image(p) for p in one_per_class]
    forms = {
        "str": [str(p) for p in one_per_class],
        "bytes": [p.read_bytes() for p in one_per_class],
        "file object": [io.BytesIO(p.read_bytes()) for p in one_per_class],
        "open file": [open(p, "rb") for p in one_per_class],
        "PIL": [Image.open(p) for p in one_per_class],
        "array": arrays,
        "non-contiguous array": [np.asfortranarray(a) for a in arrays],
    }
    for form, inputs in forms.items():
        got = classifier.predict_batch(inputs)
        assert [p.probabilities for p in got] == [p.probabilities for p in reference], form
        assert [p.review for p in got] == [p.review for p in reference], form
    for f in forms["open file"]:
        f.close()
    assert [p.path for p in classifier.predict_batch(forms["str"])] == forms["str"]
    assert classifier.predict_batch(forms["PIL"])[0].path == str(one_per_class[0])
    assert classifier.predict_batch(forms["bytes"])[0].path is None


def test_stacked_arrays_zero_copy_and_resized(classifier, one_per_class):
    meta = classifier.metadata
    arrays = [decode_image(p) for p in one_per_class]
    reference = classifier.predict_batch(arrays)
    ready = preprocess_batch(arrays, meta.input_size, policy=meta.resize_policy)  # (n, H, W, 3) at model size
    got = classifier.predict_batch(ready)
    # a stack at the model's size is one list of frames (cell centring still crops each one)
    assert [p.probabilities for p in got] == [p.probabilities for p in classifier.predict_batch(list(ready))]
    if meta.resize_policy != "cell_center":  # and, resized once already, it is the original images' batch
        assert [p.probabilities for p in got] == [p.probabilities for p in reference]
    same_size = [a for a in arrays if a.shape == arrays[0].shape]
    stacked = np.stack(same_size)  # original size: goes through preprocessing
    got = classifier.predict_batch(stacked)
    assert [p.probabilities for p in got] == [p.probabilities for p in classifier.predict_batch(same_size)]
    assert classifier.predict_batch(ready[:0]) == []
    with pytest.raises(TypeError, match="uint8"):
        classifier.predict_batch(ready.astype(np.float32))


def test_single_image_and_wrong_container(classifier, one_per_class):
    p = classifier.predict(one_per_class[0])
    assert isinstance(p, Prediction) and p.ok and p.label in classifier.classes
    with pytest.raises(TypeError, match="predict"):
        classifier.predict_batch(str(one_per_class[0]))
    with pytest.raises(TypeError, match="list of images"):
        classifier.predict_batch(decode_image(one_per_class[0]))
    with pytest.raises(TypeError, match="iterable"):
        classifier.predict_stream(str(one_per_class[0]))  # refused at the call, not at the first next()


def test_order_is_preserved_across_batches_and_errors(classifier, test_split):
    paths = [str(p) for p in test_split[0][:20]]
    inputs = [*paths, "missing.jpg", b"not an image", b""]
    random.Random(1).shuffle(inputs)
    with Classifier.load(batch_size=3, backend="onnxruntime") as small:
        got = small.predict_batch(inputs)
    by_path = {p.path: p for p in classifier.predict_batch(paths)}
    assert len(got) == len(inputs)
    for item, p in zip(inputs, got):
        if isinstance(item, bytes):
            assert p.error and p.path is None
        elif item == "missing.jpg":
            assert p.path == item and p.error == "file not found"
        else:
            assert p.path == item and p.label == by_path[item].label
            np.testing.assert_allclose(list(p.probabilities.values()),
                                       list(by_path[item].probabilities.values()), atol=1e-6)


def test_predict_stream_equals_predict_batch(classifier, test_split):
    paths = [str(p) for p in test_split[0][:40]]
    inputs = [*paths[:10], "missing.png", b"\x89PNG\r\n\x1a\n broken", *paths[10:]]
    batch = classifier.predict_batch(inputs)
    stream = list(classifier.predict_stream(iter(inputs)))  # a one-pass iterator
    assert [p.to_dict() for p in stream] == [p.to_dict() for p in batch]
    # another batch size: the same labels and (up to float rounding) probabilities
    other = list(classifier.predict_stream(inputs, batch_size=7, prefetch=3))
    assert [p.label for p in other] == [p.label for p in batch]
    assert [p.error for p in other] == [p.error for p in batch]
    ok = [i for i, p in enumerate(batch) if p.ok]
    np.testing.assert_allclose(probability_matrix([other[i] for i in ok], classifier.classes),
                               probability_matrix([batch[i] for i in ok], classifier.classes), atol=1e-6)
    # a stacked array streams too
    arrays = np.stack([decode_image(p) for p in paths[:5] if decode_image(p).shape == (363, 360, 3)])
    assert [p.to_dict() for p in classifier.predict_stream(arrays)] == \
        [p.to_dict() for p in classifier.predict_batch(arrays)]


def test_predict_stream_is_lazy_and_bounded(classifier, test_split):
    paths = [str(p) for p in test_split[0][:16]]
    pulled = []

    def source():
        for p in paths:
            pulled.append(p)
            yield p

    stream = classifier.predict_stream(source(), batch_size=2, prefetch=2)
    first = next(stream)
    assert first.path == paths[0]
    # a batch per stream being classified, at most `prefetch` read ahead, and one being gathered
    assert len(pulled) <= 2 * (classifier.runner.streams + 2 + 1)
    stream.close()
    assert len(pulled) < len(paths)


def test_threads_give_the_same_answers_as_serial(classifier, test_split):
    paths = [str(p) for p in test_split[0][:48]]
    serial = {p.path: p for p in classifier.predict_batch(paths)}
    results, failures = {}, []

    def work(k):
        try:
            order = paths[:]
            random.Random(k).shuffle(order)
            got = list(classifier.predict_stream(order)) if k % 2 else classifier.predict_batch(order)
            results[k] = list(zip(order, got))
        except Exception as error:  # surfaced below
            failures.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(results) == 4
    for pairs in results.values():
        for path, p in pairs:
            assert p.path == path
            assert (p.label, p.review) == (serial[path].label, serial[path].review)
            np.testing.assert_allclose(list(p.probabilities.values()),
                                       list(serial[path].probabilities.values()), atol=1e-6)


class SlotOnnxRunner(OnnxRuntimeRunner):
    """An onnxruntime runner that, as the TensorRT runner does, has each job
    fill memory of the runner's own and keeps two jobs in flight: job k+1 is
    filled before job k's outputs are handed out. It records whether every
    job was filled in that memory, and how many of its batch streams are open."""

    fills_input_memory = True

    def __init__(self, path, max_batch=4):
        super().__init__(path, num_threads=1)
        self.max_batch_size = max_batch
        self.filled = self.in_place = self.open = 0

    def run_batches(self, jobs):
        memory = np.zeros((2, self.max_batch_size, *self.input_shape), np.uint8)
        pending = collections.deque()
        self.open += 1

        def result(job, images):
            return job, None if images is None else split_outputs(self.metadata, self.infer(images))

        try:
            for k, job in enumerate(jobs):
                while len(pending) >= 2:  # slot k % 2 is about to be refilled: hand out what it held
                    yield result(*pending.popleft())
                slot = memory[k % 2]
                images = job.fill(slot) if job.count else None
                if images is not None:
                    self.filled += 1
                    self.in_place += np.shares_memory(images, slot)
                pending.append((job, images))
            while pending:
                yield result(*pending.popleft())
        finally:
            self.open -= 1


def test_runner_batch_slots_are_filled_in_place(classifier, test_split):
    paths = [str(p) for p in test_split[0][:11]] + ["missing.jpg"]
    runner = SlotOnnxRunner(classifier.model_path)
    with Classifier(runner, batch_size=64, num_threads=1) as slotted:
        assert slotted.batch_size == 4  # capped at the runner's max batch
        got = slotted.predict_batch(paths)
        streamed = list(slotted.predict_stream(paths))
        stacked = slotted.predict_batch(np.stack([decode_image(p) for p in paths[:3]]))
        # a consumer that stops early gives its buffers back
        stream = slotted.predict_stream(paths, batch_size=2)
        next(stream)
        stream.close()
        assert runner.open == 0
    # 3 batches of 4 (12 inputs, one missing) twice, 1 stacked, and 2 for the early-stopped stream
    # (its second batch is filled before the first one's predictions are handed out)
    assert runner.filled == runner.in_place == 3 + 3 + 1 + 2
    reference = classifier.predict_batch(paths)
    assert [p.label for p in got] == [p.label for p in reference] == [p.label for p in streamed]
    assert got[-1].error == "file not found"
    ok = [i for i, p in enumerate(reference) if p.ok]
    np.testing.assert_allclose(probability_matrix([got[i] for i in ok], classifier.classes),
                               probability_matrix([reference[i] for i in ok], classifier.classes), atol=1e-6)
    assert [p.to_dict() for p in streamed] == [p.to_dict() for p in got]
    assert [p.label for p in stacked] == [p.label for p in reference[:3]]


def test_threads_sharing_a_runner_that_fills_its_own_memory(classifier, test_split):
    """Four threads streaming through one runner, each with two batches in
    its memory at once, get what one serial call gets."""
    paths = [str(p) for p in test_split[0][:24]]
    runner = SlotOnnxRunner(classifier.model_path, max_batch=3)
    results, failures = {}, []
    with Classifier(runner, num_threads=1) as slotted:
        serial = [p.label for p in slotted.predict_batch(paths)]

        def work(k):
            try:
                results[k] = [p.label for p in slotted.predict_stream(paths)]
            except Exception as error:
                failures.append(error)

        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "threads still running after 120 s"
    assert not failures and all(labels == serial for labels in results.values())


def test_close_and_context_manager(test_split):
    with Classifier.load() as c:
        assert c.predict(test_split[0][0]).ok
    with pytest.raises(RuntimeError, match="closed"):
        c.predict(test_split[0][0])
    c.close()  # idempotent


def test_describe_names_model_precision_backend(classifier):
    d = classifier.describe()
    assert d["backend"] == "onnxruntime" and d["classes"] == classifier.classes
    assert d["precision"] in ("fp32", "fp16", "int8") and d["variant"] is not None
    assert d["input_size"] == list(classifier.metadata.input_size)


def test_import_wbc_edge_stays_light():
    code = ("import sys, wbc_edge; wbc_edge.Classifier; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
