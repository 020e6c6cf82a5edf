"""End to end, file to label, on real cell JPEGs (1,000 in the full run):
``Classifier.predict_stream`` in the SDK's default CPU configuration and the
``wbc-edge classify`` command, against the prototype's loop (Pillow open,
convert, resize, numpy normalize, PyTorch eager ResNet-18 at batch 1, softmax,
max), same images, same input size and weights, same machine, same run.

The command's time is the whole process, as a user sees it: interpreter start,
imports, model load, reading, classifying and writing the JSON report; the
in-process rows (prototype, predict_stream) exclude model loading.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.workload import cell_images, link_folder

WARMUP_IMAGES = 16


def _agreement(labels: list, reference: list | None) -> float | None:
    if reference is None or len(reference) != len(labels):
        return None
    return sum(a == b for a, b in zip(labels, reference)) / len(labels)


def test_prototype_loop(measure, settings, prototype, torch_threads, e2e_images, results_log):
    from benchmarks.prototype import PrototypeLoop

    net, meta = prototype
    loop = PrototypeLoop(net, meta)
    paths = e2e_images.paths
    results = measure(lambda: loop.run(paths), warmup=lambda: loop.run(paths[:WARMUP_IMAGES]),
                      stage="end-to-end", name="prototype loop (Pillow + numpy + torch eager, batch 1)",
                      backend="torch-eager", precision="fp32", images=len(paths), batch=1,
                      threads=torch_threads, baseline=True, rounds=settings.e2e_rounds,
                      note=f"per image: open, convert RGB, resize, normalize, ResNet-18 eager, softmax, max; "
                           f"{e2e_images.note}")
    results_log.labels["prototype"] = [label for label, _ in results]


@pytest.fixture(scope="module")
def default_classifier(settings):
    from wbc_edge.classifier import Classifier

    # The SDK's default CPU configuration (num_threads=None: every CPU, unless --threads caps it).
    with Classifier.load(num_threads=settings.threads) as classifier:
        yield classifier


def _stream_case(measure, settings, classifier, e2e_images, results_log, label):
    paths = [str(p) for p in e2e_images.paths]

    def classify():
        return [p.label for p in classifier.predict_stream(paths)]

    described = classifier.describe()
    extra = {"classifier": {k: described.get(k) for k in ("backend", "precision", "variant", "path")},
             "batch_size": classifier.batch_size, "num_threads": classifier.num_threads}
    labels = measure(classify, warmup=lambda: classifier.predict_batch(paths[:WARMUP_IMAGES]),
                     stage="end-to-end", name=f"Classifier.predict_stream ({label})", backend=classifier.backend,
                     precision=classifier.variant or classifier.precision, images=len(paths),
                     batch=classifier.batch_size, threads=classifier.num_threads,
                     rounds=settings.e2e_rounds, extra=extra, note=e2e_images.note)
    assert len(labels) == len(paths) and None not in labels, "every real cell must be classified"
    extra["label_agreement_with_prototype"] = _agreement(labels, results_log.labels.get("prototype"))
    return labels


def test_predict_stream_default(measure, settings, default_classifier, e2e_images, results_log):
    _stream_case(measure, settings, default_classifier, e2e_images, results_log, "default CPU configuration")


def test_predict_stream_fp32(measure, settings, default_classifier, e2e_images, results_log):
    """The FP32 model on the same path, when the default is another precision
    (INT8): separates what quantization gives from what the pipeline gives."""
    if default_classifier.variant in (None, "fp32"):
        pytest.skip("the default configuration already runs the FP32 model")
    from wbc_edge.classifier import Classifier

    with Classifier.load(precision="fp32", num_threads=settings.threads) as classifier:
        _stream_case(measure, settings, classifier, e2e_images, results_log, "fp32")


def _command() -> list[str]:
    script = Path(sys.executable).with_name("wbc-edge")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from wbc_edge.cli import main; sys.exit(main())"]


def test_cli_classify(measure, settings, e2e_images, results_log, tmp_path):
    folder = link_folder(e2e_images, tmp_path / "cells")
    warm = link_folder(cell_images(WARMUP_IMAGES), tmp_path / "warm")
    report = tmp_path / "report.json"

    def run(target=folder):
        command = [*_command(), "classify", str(target), "--out", str(report)]
        if settings.threads:
            command += ["--threads", str(settings.threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            tail = lines[-1] if lines else f"exit code {done.returncode}"
            if "NotImplementedError" in done.stderr:
                pytest.skip(f"wbc-edge classify is not usable yet: {tail}")
            pytest.fail(f"{' '.join(command)} failed with exit code {done.returncode}: {tail}")
        return done

    extra: dict = {"command": "wbc-edge classify FOLDER --out report.json"}
    measure(run, warmup=lambda: run(warm), stage="end-to-end", name="wbc-edge classify (whole process)",
            backend="cli", precision="default", images=len(e2e_images.paths), batch=None, threads=None,
            rounds=settings.e2e_rounds, extra=extra,
            note="includes interpreter start, imports, model load and the JSON report; " + e2e_images.note)
    entries = json.loads(report.read_text())["images"]
    assert len(entries) == len(e2e_images.paths), "every input must appear in the report once"
    entries.sort(key=lambda entry: Path(entry["path"]).name)
    labels = [entry["label"] for entry in entries]
    assert None not in labels, [entry["error"] for entry in entries if entry["label"] is None][:3]
    extra["label_agreement_with_prototype"] = _agreement(labels, results_log.labels.get("prototype"))
