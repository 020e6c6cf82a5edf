"""Evaluation metrics against hand-computed values; temperature scaling."""

from __future__ import annotations

import numpy as np
import pytest

from wbc_edge.metrics import classification_report, expected_calibration_error, softmax
from wbc_edge.training.temperature import fit_temperature, nll


def one_hot_probs(pred, num_classes, confidence=0.9):
    p = np.full((len(pred), num_classes), (1 - confidence) / (num_classes - 1))
    p[np.arange(len(pred)), pred] = confidence
    return p


def test_report_against_hand_computed_confusion_matrix():
    classes = ["a", "b", "c"]
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2])
    report = classification_report(y_true, one_hot_probs(y_pred, 3), classes)
    # rows: true a, b, c; columns: predicted a, b, c
    assert report["confusion_matrix"] == {"labels": classes, "matrix": [[1, 1, 0], [0, 2, 0], [1, 0, 2]]}
    assert report["accuracy"] == pytest.approx(5 / 7)
    assert report["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 2 + 2 / 3) / 3)
    a, b, c = (report["per_class"][k] for k in classes)
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(1 / 2), pytest.approx(1 / 2), 2)
    assert (b["precision"], b["recall"], b["support"]) == (pytest.approx(2 / 3), pytest.approx(1.0), 2)
    assert (c["precision"], c["recall"], c["support"]) == (pytest.approx(1.0), pytest.approx(2 / 3), 3)
    assert b["f1"] == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert report["num_images"] == 7


def test_subset_of_model_classes():
    # a 4-class model evaluated on data holding only classes 0 and 2
    y_true = np.array([0, 0, 2, 2])
    y_pred = np.array([0, 3, 2, 2])  # one cell predicted as a class absent from the data
    report = classification_report(y_true, one_hot_probs(y_pred, 4), ["w", "x", "y", "z"])
    assert set(report["per_class"]) == {"w", "y"}
    assert report["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)
    assert report["accuracy"] == pytest.approx(3 / 4)
    assert report["confusion_matrix"]["matrix"][0] == [1, 0, 0, 1]


def test_ece_by_hand():
    # two bins in use: confidence 0.9 (4 samples, 3 right) and 0.6 (2 samples, 2 right)
    probs = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    y = np.array([0, 0, 0, 1, 0, 0])
    expected = 4 / 6 * abs(0.75 - 0.9) + 2 / 6 * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, y) == pytest.approx(expected)


def overconfident_logits(n, num_classes=4, seed=0, sharpness=4.0):
    """Labels drawn from softmax(z), so z is perfectly calibrated; the logits
    returned are z * sharpness: overconfident at T=1, calibrated at T=sharpness."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, num_classes))
    p = softmax(z).astype(np.float64)
    y = np.array([rng.choice(num_classes, p=row / row.sum()) for row in p])
    return z * sharpness, y


def test_temperature_scaling_lowers_ece_on_held_out_data():
    fit_logits, fit_y = overconfident_logits(3000, seed=1)
    test_logits, test_y = overconfident_logits(3000, seed=2)
    t = fit_temperature(fit_logits, fit_y)
    assert 3.0 < t < 5.0  # recovers the sharpness the data was made with
    before = expected_calibration_error(softmax(test_logits), test_y)
    after = expected_calibration_error(softmax(test_logits, t), test_y)
    assert after < before / 3
    # predictions are unchanged, only confidence
    assert (softmax(test_logits).argmax(1) == softmax(test_logits, t).argmax(1)).all()


def test_fitted_temperature_minimizes_nll():
    logits, y = overconfident_logits(500, seed=3)
    t = fit_temperature(logits, y)
    for other in (t * 0.9, t * 1.1):
        assert nll(logits, y, t) <= nll(logits, y, other)
