"""The domain guard end to end: fitted by training, carried in the checkpoint
and the ONNX graph, scored the same by PyTorch and ONNX Runtime, reported per
cell and per run; and a model without one reported as unavailable."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is needed (pip install 'wbc-edge[train]')")

from tests.test_cell_center import no_cell_images  # noqa: E402
from wbc_edge.domain_check import NO_CELL_REASON, cell_verdict, domain_check  # noqa: E402
from wbc_edge.metrics import auroc  # noqa: E402
from wbc_edge.prediction import Prediction  # noqa: E402
from wbc_edge.training.domain_guard import DomainGuard, fit_guard  # noqa: E402


def test_graph_score_equals_the_numpy_score_and_separates_shifted_features():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    centres = rng.normal(0, 3, (3, 16))
    train = centres[labels] + rng.normal(0, 1, (600, 16))
    stats = fit_guard(train, labels, 3, stages=(4,))
    same = centres[labels[:200]] + rng.normal(0, 1, (200, 16))
    shifted = same + 4.0  # every feature moved: another lab
    guard = DomainGuard.from_statistics(stats)
    stage4 = torch.tensor(shifted, dtype=torch.float32)[:, :, None, None]  # pooled = the values themselves
    graph = guard([None, None, None, stage4]).numpy().ravel()
    np.testing.assert_allclose(graph, stats.score(shifted), rtol=1e-4)
    assert auroc(stats.score(same), stats.score(shifted)) > 0.99
    assert np.median(stats.score(same)) < 2.0  # about 1 per dimension in distribution


def test_auroc_matches_its_definition():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5


def test_verdicts_never_report_a_non_finite_score():
    guard = {"threshold": 2.0}
    assert cell_verdict(float("nan"), True, guard) == (None, True, "the domain guard's score is not finite")
    assert cell_verdict(float("inf"), True, guard)[0] is None
    assert cell_verdict(1.0, True, guard) == (1.0, False, None)
    assert cell_verdict(3.0, True, guard)[1] is True
    assert cell_verdict(None, True, None) == (None, None, None)  # no guard: unknown, not guessed
    assert cell_verdict(None, False, None) == (None, True, NO_CELL_REASON)


def test_domain_check_status_and_small_run_caveat():
    guard = {"threshold": 2.0, "shift_fraction": 0.15}
    ok = [Prediction("a", "x", 0.9, out_of_distribution=False)] * 95 + [Prediction("b", "x", 0.9, out_of_distribution=True)] * 5
    assert domain_check(ok, guard)["status"] == "ok" and "caveat" not in domain_check(ok, guard)
    shifted = ok[:50] + [Prediction("c", "x", 0.9, out_of_distribution=True)] * 50
    record = domain_check(shifted, guard)
    assert record["status"] == "shift" and record["out_of_distribution"] == 50 and record["fraction"] == 0.5
    one = domain_check([Prediction("d", "x", 0.9, out_of_distribution=False)], guard)
    assert one["status"] == "ok" and "caveat" in one
    assert domain_check(ok, None)["status"] == "unavailable"


@pytest.fixture(scope="module")
def guarded_checkpoint(tmp_path_factory, sample_dir, sample_manifest):
    from wbc_edge.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("guarded")
    train(TrainConfig(data=str(sample_dir), manifest=str(sample_manifest), out=str(out), epochs=2, batch_size=16,
                      input_size=(48, 48), progress=False))
    return out / "best.pt"


def test_training_fits_a_guard_that_every_backend_reports(guarded_checkpoint, tmp_path, cell_images, sample_dir):
    from wbc_edge import Classifier
    from wbc_edge.export.onnx_export import export_checkpoint
    from wbc_edge.training.checkpoint import load_checkpoint

    state = load_checkpoint(guarded_checkpoint)
    record = state["meta"]["domain_guard"]
    assert record["method"] == "mahalanobis" and np.isfinite(record["threshold"]) and record["threshold"] > 0
    assert state["meta"]["resize_policy"] == "cell_center" and state["meta"]["input_normalization"] == "per_image"

    onnx_path = tmp_path / "guarded.onnx"
    export_checkpoint(guarded_checkpoint, onnx_path, verify_images=sample_dir)
    pictures = no_cell_images(cell_images)
    inputs = cell_images[:12] + list(pictures.values())
    with Classifier.load(guarded_checkpoint, backend="torch") as by_torch, \
            Classifier.load(onnx_path, backend="onnxruntime") as by_onnx:
        a, b = by_torch.predict_batch(inputs), by_onnx.predict_batch(inputs)
    for p, q in zip(a, b):
        assert p.ood_score is not None and q.ood_score is not None
        assert q.ood_score == pytest.approx(p.ood_score, rel=1e-3, abs=1e-3)
        assert p.out_of_distribution == q.out_of_distribution
    for name, p in zip(pictures, b[12:]):
        assert p.out_of_distribution is True and p.review, name
        assert p.review_reason.startswith(NO_CELL_REASON), name
    assert all(np.isfinite(p.ood_score) for p in b)


def test_classify_reports_the_domain_check(guarded_checkpoint, tmp_path, sample_dir):
    from wbc_edge.cli import main

    folder = sample_dir / "lymphocyte"
    out = tmp_path / "report.json"
    assert main(["classify", str(folder), "--model", str(guarded_checkpoint), "--backend", "torch",
                 "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    check = report["domain_check"]
    assert check["status"] in ("ok", "shift") and check["cells"] == len(report["images"])
    assert {"ood_score", "out_of_distribution"} <= set(report["images"][0])


def test_a_model_without_a_guard_says_so(tmp_path, sample_dir, shipped_fp32_checkpoint):
    from wbc_edge import Classifier
    from wbc_edge.report import build_report

    with Classifier.load(shipped_fp32_checkpoint) as classifier:  # the network's weights without the guard
        predictions = classifier.predict_batch([next((sample_dir / "monocyte").iterdir())])
        report = build_report(predictions, classifier.describe(), domain_guard=classifier.metadata.domain_guard)
    assert predictions[0].ood_score is None and predictions[0].out_of_distribution is None
    assert report["domain_check"]["status"] == "unavailable"


def test_evaluate_reports_the_guard(guarded_checkpoint, sample_dir, sample_manifest):
    from wbc_edge.backends import load_runner
    from wbc_edge.training.evaluate import evaluate, format_report

    with load_runner(guarded_checkpoint, backend="torch") as runner:
        report = evaluate(runner, sample_dir, sample_manifest, progress=False)
    guard = report["domain_guard"]
    assert 0.0 <= guard["out_of_distribution_fraction"] <= 1.0
    assert len(guard["ood_scores"]) == report["num_images"]
    assert "balanced_accuracy" in report and len(report["confusion_matrix"]["matrix"]) == 8  # the classes only
    assert "domain guard:" in format_report(report)


def test_quantization_keeps_the_guard_in_float_and_finds_the_real_classifier(guarded_checkpoint, tmp_path,
                                                                              sample_dir):
    onnx = pytest.importorskip("onnx")
    from wbc_edge.calibration import graph_prep
    from wbc_edge.export.onnx_export import export_checkpoint

    path = tmp_path / "guarded.onnx"
    export_checkpoint(guarded_checkpoint, path, verify_images=sample_dir)
    model = onnx.load(str(path))
    assert graph_prep.end_layers(model)["classifier"] == "/fc/Gemm"
    excluded = graph_prep.excluded_nodes(model, [])
    heads = [name for name in excluded if name.startswith(("/guard/", "/cam/"))]
    # and the Concat that joins the heads into the one output
    assert heads and [name for name in excluded if name not in heads] == ["/Concat"]
    kept = {(n.name.split("/")[1], n.op_type) for n in model.graph.node if n.name in excluded}
    assert {("guard", "MatMul"), ("guard", "ReduceMin"), ("cam", "Conv")} <= kept
