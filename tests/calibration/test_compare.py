"""wbc-edge compare: the parity report of two models on the same labelled images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the test models come from PyTorch (pip install 'wbc-edge[export]')")
onnx = pytest.importorskip("onnx", reason="pip install 'wbc-edge[export]'")

from tests.conftest import SAMPLE_DIR, SAMPLE_MANIFEST, sample_rows  # noqa: E402
from tests.export.test_export import CLASSES, export_fixture  # noqa: E402
from wbc_edge.calibration.compare import check_targets, parity_report  # noqa: E402
from wbc_edge.cli import main  # noqa: E402
from wbc_edge.metadata import ModelMetadata, sidecar_path  # noqa: E402
from wbc_edge.metrics import softmax  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint, its verified ONNX export, and a copy of that ONNX whose
    classifier bias favours class 2 (a model that disagrees on some images)."""
    from onnx import numpy_helper

    checkpoint, exported = export_fixture(tmp_path_factory.mktemp("compare"))
    model = onnx.load(str(exported))
    bias = next(i for i in model.graph.initializer if i.name == "net.fc.bias")
    values = numpy_helper.to_array(bias).copy()
    values[2] += 0.5
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    shifted = exported.with_name("shifted.onnx")
    onnx.save(model, str(shifted))
    shutil.copy(sidecar_path(exported), sidecar_path(shifted))
    return {"checkpoint": checkpoint, "onnx": exported, "shifted": shifted}


def test_parity_report_numbers():
    classes = ["a", "b", "c"]
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits_a = np.array([[3, 0, 0], [3, 0, 0], [0, 3, 0], [0, 3, 0], [0, 0, 3], [3, 0, 0]], dtype=np.float32)
    logits_b = logits_a.copy()
    logits_b[1] = [0, 0.5, 0]  # a correct image becomes wrong (class a -> b)
    logits_b[5] = [0, 0, 3]  # a wrong image becomes right (class c)
    report = parity_report(logits_a, logits_b, labels, classes, 1.0, 2.0, [f"{i}.jpg" for i in range(6)])
    assert report["top1_agreement"] == pytest.approx(4 / 6) and report["num_disagreements"] == 2
    assert report["a"]["accuracy"] == pytest.approx(5 / 6) and report["b"]["accuracy"] == pytest.approx(5 / 6)
    assert report["recall_change"] == pytest.approx({"a": -0.5, "b": 0.0, "c": 0.5})
    assert report["balanced_accuracy_change"] == pytest.approx(0.0)
    # Each model's own temperature: B's probabilities are softmax(logits / 2).
    expected = np.abs(softmax(logits_a, 1.0) - softmax(logits_b, 2.0)).max()
    assert report["max_abs_prob_diff"] == pytest.approx(expected, abs=1e-6)
    assert [d["image"] for d in report["disagreements"]] == ["1.jpg", "5.jpg"]
    assert check_targets(report, 0.995, 0.005) == ["top-1 agreement 66.67% < 99.50%"]


def test_compare_checkpoint_with_its_export_agrees_fully(models, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["compare", str(models["checkpoint"]), str(models["onnx"]), "--data", str(SAMPLE_DIR),
                 "--manifest", str(SAMPLE_MANIFEST), "--split", "test", "--out", str(out), "--no-progress",
                 "--min-agreement", "1.0", "--max-balanced-drop", "0"])
    table = capsys.readouterr().out
    assert code == 0, table
    report = json.loads(out.read_text())
    assert report["num_images"] == len(sample_rows("test")) == 128
    assert report["top1_agreement"] == 1.0 and report["max_abs_prob_diff"] < 1e-4
    assert report["models"]["a"]["backend"] == "torch" and report["models"]["b"]["backend"] == "onnxruntime"
    assert report["a"] == pytest.approx(report["b"], abs=1e-6)
    assert "top-1 agreement" in table and "recall per class" in table


def test_compare_fails_the_targets_of_a_model_that_disagrees(models, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = main(["compare", str(models["onnx"]), str(models["shifted"]), "--data", str(SAMPLE_DIR),
                 "--manifest", str(SAMPLE_MANIFEST), "--out", str(out), "--no-progress", "--min-agreement", "0.995"])
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert code == 1 and "targets missed: top-1 agreement" in text
    assert report["num_images"] == 208 and report["num_disagreements"] > 0
    # Every disagreement moved to the favoured class, and its recall can only grow.
    assert {d["b"] for d in report["disagreements"]} == {CLASSES[2]}
    assert report["recall_change"][CLASSES[2]] > 0
    assert report["disagreements"][0]["image"].count("/") == 1  # relative to the data folder: class/file.jpg


def test_compare_refuses_models_that_mean_different_things(models, tmp_path, capsys):
    from wbc_edge.export.onnx_files import save_model

    other = tmp_path / "other.onnx"
    meta = ModelMetadata.load(sidecar_path(models["onnx"]))
    save_model(onnx.load(str(models["onnx"])), other, meta.replace(classes=list(reversed(meta.classes))))
    code = main(["compare", str(models["onnx"]), str(other), "--data", str(SAMPLE_DIR), "--manifest",
                 str(SAMPLE_MANIFEST), "--no-progress"])
    assert code == 2
    assert "classes mismatch" in capsys.readouterr().err
