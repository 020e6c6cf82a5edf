"""wbc-edge evaluate on real cell images with the shipped model: the metrics
agree with the model's own predictions, a class subset is handled, plots are
written, unreadable images are listed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from wbc_edge.backends import load_runner
from wbc_edge.cli import main
from wbc_edge.datasets import load_images, read_samples
from wbc_edge.metrics import softmax
from wbc_edge.models import resolve_model
from wbc_edge.training.evaluate import evaluate


@pytest.fixture(scope="module")
def runner():
    try:
        path = resolve_model(None, precision="fp32")
    except Exception as error:  # the shipped model is missing
        pytest.skip(f"no shipped FP32 model: {error}")
    with load_runner(path) as r:
        yield r


def test_metrics_match_the_models_predictions(runner, sample_dir, sample_manifest):
    report = evaluate(runner, sample_dir, sample_manifest, split="test", progress=False)
    meta = runner.metadata
    images = load_images(read_samples(sample_dir, sample_manifest, "test"), meta.classes, meta.input_size,
                         policy=meta.resize_policy, progress=False)
    logits = runner.infer(images.images)[:, meta.output_columns["logits"]]
    predicted = softmax(logits, meta.temperature).argmax(1)
    matrix = np.array(report["confusion_matrix"]["matrix"])
    assert report["confusion_matrix"]["labels"] == meta.classes
    assert matrix.sum() == report["num_images"] == len(images) == 128
    assert np.trace(matrix) == (predicted == images.labels).sum()
    assert report["accuracy"] == pytest.approx((predicted == images.labels).mean())
    recalls = [row["recall"] for row in report["per_class"].values()]
    assert report["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert all(row["support"] == 16 for row in report["per_class"].values())
    assert 0 <= report["ece"] <= 1 and report["errors"] == []
    assert report["temperature"] == meta.temperature


def test_subset_of_classes_and_unreadable_files(runner, sample_dir, tmp_path):
    data = tmp_path / "four-classes"
    for label in ("basophil", "eosinophil", "lymphocyte", "platelet"):
        (data / label).mkdir(parents=True)
        for path in sorted((sample_dir / label).glob("*.jpg"))[:5]:
            shutil.copy(path, data / label / path.name)
    (data / "platelet" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    report = evaluate(runner, data, progress=False)
    assert set(report["per_class"]) == {"basophil", "eosinophil", "lymphocyte", "platelet"}
    assert report["num_images"] == 20
    assert [e["path"] for e in report["errors"]] == [str(data / "platelet" / "broken.jpg")]
    # the model may still predict classes absent from the data: they count as errors
    assert np.array(report["confusion_matrix"]["matrix"]).sum() == 20


def test_cli_writes_json_and_plots(runner, sample_dir, sample_manifest, tmp_path, capsys):
    out, plots = tmp_path / "metrics.json", tmp_path / "plots"
    code = main(["evaluate", str(sample_dir), "--manifest", str(sample_manifest), "--split", "test",
                 "--out", str(out), "--plots", str(plots), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    for field in ("accuracy", "balanced_accuracy", "per_class", "confusion_matrix", "ece", "num_images", "errors"):
        assert field in report
    for name in ("confusion_matrix.png", "reliability.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "balanced accuracy" in capsys.readouterr().out


def test_cli_refuses_labels_unknown_to_the_model(runner, sample_dir, tmp_path, capsys):
    data = tmp_path / "odd"
    (data / "smudge_cell").mkdir(parents=True)
    shutil.copy(next((sample_dir / "lymphocyte").glob("*.jpg")), data / "smudge_cell" / "a.jpg")
    assert main(["evaluate", str(data), "--no-progress"]) == 2
    assert "labels not among the model's classes" in capsys.readouterr().err
