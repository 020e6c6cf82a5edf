"""Classification metrics from labels and probabilities (numpy only).

Metrics cover the classes present in the data, which may be a subset of the
model's (another lab's 4-class set, say): a class with no true sample does not
count in balanced accuracy, but predictions of it still count as errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``m[i, j]``: samples of true class i predicted as class j."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def expected_calibration_error(probabilities: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al., 2017): the support-
    weighted mean |accuracy - confidence| over bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def reliability(probabilities: np.ndarray, y_true: np.ndarray, bins: int = 15) -> dict[str, list]:
    """Per-bin mean confidence, accuracy and count, for a reliability diagram."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    out: dict[str, list] = {"edges": edges.tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        in_bin = which == b
        out["count"].append(int(in_bin.sum()))
        out["confidence"].append(float(confidence[in_bin].mean()) if in_bin.any() else None)
        out["accuracy"].append(float(correct[in_bin].mean()) if in_bin.any() else None)
    return out


def classification_report(y_true: np.ndarray, probabilities: np.ndarray,
                          classes: Sequence[str]) -> dict[str, Any]:
    """accuracy, balanced_accuracy, per_class (precision, recall, f1, support),
    confusion_matrix (labels, matrix) and ece, over the classes present."""
    y_true = np.asarray(y_true)
    y_pred = probabilities.argmax(axis=1)
    m = confusion_matrix(y_true, y_pred, len(classes))
    support = m.sum(axis=1)
    predicted = m.sum(axis=0)
    present = np.flatnonzero(support)
    tp = np.diag(m)
    per_class = {}
    for i in present:
        precision = tp[i] / predicted[i] if predicted[i] else 0.0
        recall = tp[i] / support[i]
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[classes[i]] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(support[i]),
        }
    recalls = [per_class[classes[i]]["recall"] for i in present]
    return {
        "num_images": len(y_true),
        "accuracy": float(tp.sum() / max(1, len(y_true))),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "per_class": per_class,
        "confusion_matrix": {"labels": list(classes), "matrix": m.tolist()},
        "ece": expected_calibration_error(probabilities, y_true) if len(y_true) else 0.0,
    }


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` per row, in float64 (stable: the row
    maximum is subtracted first). The one softmax: predictions, evaluation,
    calibration and comparison all use it."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """Area under the ROC curve of telling ``scores_out`` (should be higher)
    from ``scores_in``: the probability that a random out-of-distribution
    image scores above a random in-distribution one (ties count half)."""
    scores_in, scores_out = np.asarray(scores_in, np.float64), np.asarray(scores_out, np.float64)
    if not len(scores_in) or not len(scores_out):
        return float("nan")
    both = np.concatenate([scores_in, scores_out])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    sorted_scores = both[order]
    # average ranks of ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(both)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    r_out = ranks[len(scores_in):].sum()
    n_in, n_out = len(scores_in), len(scores_out)
    return float((r_out - n_out * (n_out + 1) / 2) / (n_in * n_out))
