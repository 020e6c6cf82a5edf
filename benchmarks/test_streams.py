"""Streams on the CPU engines: ``Classifier.predict_stream`` over real JPEG
files with one stream (the default: every thread on one batch, the next batch
read meanwhile) against two (two batches inferred at once, each on half the
threads), per engine and shipped model, in alternating rounds of the same run
(see benchmarks/test_cpu_engines.py: ``alternate``, ``record``).

The whole path is timed, file to prediction: decoding and preprocessing are
what streams overlap with inference. Batches are small enough (16 images in a
full run) that each round has several per stream, so filling and draining the
pipeline does not dominate.
"""

from __future__ import annotations

import pytest

from benchmarks.test_cpu_engines import alternate, record
from wbc_edge import Classifier
from wbc_edge.models import make_command, variant_path


@pytest.mark.parametrize("variant", ["fp32", "int8-cpu"])
@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_two_streams_vs_one(results_log, settings, all_threads, preprocess_images, engine, variant):
    if engine == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is needed: pip install 'wbc-edge[openvino]'")
    path = variant_path(variant)
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped (yet): make it with {make_command(variant)}")
    streams = 2
    if all_threads < streams:
        pytest.skip(f"{all_threads} thread here: two streams need two")
    paths = [str(p) for p in preprocess_images.paths]
    batch = max(1, min(16, len(paths) // (4 * streams)))
    with Classifier.load(path, backend=engine, num_threads=all_threads, streams=1, batch_size=batch) as one, \
            Classifier.load(path, backend=engine, num_threads=all_threads, streams=streams, batch_size=batch) as many:
        labels = {}

        def classify(classifier, key):
            def run():
                labels[key] = [p.label for p in classifier.predict_stream(paths)]
            return run

        rounds = max(settings.min_rounds, min(settings.max_rounds, 6 if settings.mode == "full" else 2))
        times = alternate(classify(one, 1), classify(many, streams), rounds)
        agreement = sum(a == b for a, b in zip(labels[1], labels[streams])) / len(paths)
        described = many.runner.describe()
    record(results_log, times, stage="end-to-end streams",
           names=(f"{engine} {variant}: predict_stream, 1 stream x {all_threads} threads",
                  f"{engine} {variant}: predict_stream, {streams} streams x {described['threads_per_stream']} "
                  f"thread{'s' * (described['threads_per_stream'] > 1)}"),
           backends=(engine, engine), precision=variant, images=len(paths), batch=one.batch_size,
           threads=all_threads, extra={"label_agreement": agreement, "runner": described},
           note=preprocess_images.note)
    assert None not in labels[streams], "every real cell must be classified"
    assert agreement >= 0.99, f"{engine} {variant}: streams change {1 - agreement:.1%} of the labels"
