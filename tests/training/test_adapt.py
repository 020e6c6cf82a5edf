"""wbc-edge adapt: bad inputs refused before any work, and a real adaptation of
the shipped model to real cells writing a model directory that --model takes."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is needed (pip install 'wbc-edge[train]')")
pytest.importorskip("onnx", reason="the onnx package is needed (pip install 'wbc-edge[export]')")

from tests.conftest import sample_rows  # noqa: E402
from wbc_edge import Classifier  # noqa: E402
from wbc_edge.backends.probe import exact_int8  # noqa: E402
from wbc_edge.cli import main  # noqa: E402
from wbc_edge.models import resolve_model, shipped_models  # noqa: E402
from wbc_edge.training.adapt import AdaptConfig, AdaptError, adapt, reference_samples  # noqa: E402

pytestmark = pytest.mark.skipif("fp32" not in shipped_models(), reason="the shipped FP32 model is not in this checkout")


def folder_per_class(root: Path, sample_dir: Path, per_class: int, classes=None, split="train") -> Path:
    counts: dict[str, int] = {}
    for row in sample_rows(split):
        if (classes and row["label"] not in classes) or counts.get(row["label"], 0) >= per_class:
            continue
        counts[row["label"]] = counts.get(row["label"], 0) + 1
        (root / row["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(sample_dir / row["path"], root / row["label"])
    return root


def test_shipped_reference_cells_are_real_and_disjoint_from_the_test_sample():
    replay, check = reference_samples("replay"), reference_samples("check")
    assert len(replay) == 96 and len(check) == 48
    assert all(s.path.is_file() for s in replay + check)
    names = {s.path.name for s in replay} | {s.path.name for s in check}
    assert not names & {Path(r["path"]).name for r in sample_rows()}


def test_unknown_labels_are_named_and_nothing_is_written(tmp_path, sample_dir):
    data = folder_per_class(tmp_path / "cells", sample_dir, 3, classes={"lymphocyte", "monocyte"})
    (data / "blast").mkdir()
    shutil.copy(next((data / "lymphocyte").iterdir()), data / "blast" / "x.jpg")
    with pytest.raises(AdaptError, match="blast"):
        adapt(tmp_path / "out", labeled=data, cfg=AdaptConfig(progress=False))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_a_class_with_one_cell_and_too_few_cells_are_refused(tmp_path, sample_dir):
    data = folder_per_class(tmp_path / "one", sample_dir, 1, classes={"lymphocyte", "monocyte"})
    with pytest.raises(AdaptError, match="fewer than 2 labelled cells: lymphocyte \\(1\\)"):
        adapt(tmp_path / "out", labeled=data, cfg=AdaptConfig(progress=False))
    few = folder_per_class(tmp_path / "few", sample_dir, 2, classes={"lymphocyte", "monocyte"})
    with pytest.raises(AdaptError, match="4 readable labelled cells; adaptation needs at least 8"):
        adapt(tmp_path / "out", labeled=few, cfg=AdaptConfig(progress=False))


def test_an_existing_out_is_refused_without_force(tmp_path, sample_dir):
    (tmp_path / "out").mkdir()
    assert main(["adapt", "--labeled", str(sample_dir), "--out", str(tmp_path / "out")]) == 2


def test_adapting_to_corrections_writes_a_model_directory_every_command_takes(tmp_path, sample_dir, capsys):
    cells = folder_per_class(tmp_path / "cells", sample_dir, 6, classes={"lymphocyte", "monocyte", "neutrophil"})
    images = sorted(cells.rglob("*.jpg"))
    corrections = tmp_path / "corrections.csv"
    with open(corrections, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "sha256", "predicted", "confidence", "corrected", "reviewer", "reviewed_at", "model_sha256"])
        for p in images:
            w.writerow([p, hashlib.sha256(p.read_bytes()).hexdigest(), "x", 0.5, p.parent.name, "t", "now", "m"])
        w.writerow([tmp_path / "gone.jpg", "0" * 64, "x", 0.5, "monocyte", "t", "now", "m"])
        w.writerow([images[0], "f" * 64, "x", 0.5, "monocyte", "t", "now", "m"])  # changed since review
    out = tmp_path / "my-lab"
    report = adapt(out, labeled=corrections, cfg=AdaptConfig(epochs=1, min_steps=3, progress=False))

    assert report["labeled"]["kind"] == "corrections" and report["labeled"]["cells"] == len(images)
    reasons = sorted(r["reason"] for r in report["labeled"]["refused_rows"])
    assert reasons[0] == "file not found" and reasons[1].startswith("sha256 differs")
    assert {p.name for p in out.iterdir()} >= {"model.fp32.onnx", "model.fp32.json", "model.int8-cpu.onnx",
                                                "adapt-report.json", "adapt-report.txt"}
    assert not list(tmp_path.glob(".my-lab.*"))  # the temporary build folder is gone
    meta = json.loads((out / "model.fp32.json").read_text())
    provenance = meta["extra"]["adaptation"]
    assert provenance["base_sha256"] == hashlib.sha256(resolve_model(backend="torch").read_bytes()).hexdigest()
    assert len(provenance["images"]) == len(images)
    assert all(i["sha256"] == hashlib.sha256(Path(i["path"]).read_bytes()).hexdigest() for i in provenance["images"])
    assert meta["domain_guard"]["threshold"] > 0 and meta["cam"]["shape"][0] == len(meta["classes"])
    check = report["before_after"]["pbc_reference_check_cells"]
    assert check["before"]["cells"] == 48 and 0 <= check["after"]["balanced_accuracy"] <= 1

    cpu_default = "int8-cpu" if exact_int8() else "fp32"  # picked as for the shipped model
    assert resolve_model(out) == out / f"model.{cpu_default}.onnx"
    with Classifier.load(out) as adapted, Classifier.load(out, precision="fp32") as fp32:
        a, b = adapted.predict_batch(images[:4]), fp32.predict_batch(images[:4])
    assert all(p.ok and p.ood_score is not None for p in a + b)
    assert main(["classify", str(cells), "--model", str(out)]) == 0
    assert "lymphocyte" in capsys.readouterr().out


def test_pseudo_labels_are_confident_and_capped_per_class(sample_paths):
    import numpy as np

    from wbc_edge.metrics import softmax
    from wbc_edge.preprocess import preprocess_batch
    from wbc_edge.training.adapt import PSEUDO_CONFIDENCE, PSEUDO_PER_CLASS, logits_of, pseudo_labels
    from wbc_edge.training.checkpoint import load_deployable

    model, meta = load_deployable(resolve_model(backend="torch"))
    from wbc_edge.decode import decode_images

    images = preprocess_batch(decode_images(sample_paths), meta.input_size, policy=meta.resize_policy)
    labels, kept = pseudo_labels(model, images, meta.temperature)
    confidence = softmax(logits_of(model, images), meta.temperature).max(1)
    assert kept.any() and (confidence[kept] >= PSEUDO_CONFIDENCE).all()
    counts = np.bincount(labels[kept], minlength=meta.num_classes)
    assert counts.max() == PSEUDO_PER_CLASS  # 208 PBC cells: more than enough per class
    for c in range(meta.num_classes):  # the kept ones are the most confident of their class
        mine = (labels == c) & (confidence >= PSEUDO_CONFIDENCE)
        if kept[mine].sum() and (~kept[mine]).any():
            assert confidence[mine & kept].min() >= confidence[mine & ~kept].max()
