"""Evaluating any model the SDK can run on labelled images.

The data (a folder per class, or a manifest and split) may cover a subset of
the model's classes: metrics then cover the classes present. Images are read
through the inference path; unreadable ones are listed, not fatal. Needs no
torch: ONNX models run on onnxruntime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from wbc_edge.atomic import write_atomic
from wbc_edge.backends.base import Runner
from wbc_edge.domain_check import cell_verdict

from ..datasets import load_images, read_samples
from ..metrics import classification_report, expected_calibration_error, reliability, softmax


def predict_logits(runner: Runner, images: np.ndarray, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Logits for a uint8 NHWC batch, in chunks of ``batch_size``."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="inference", unit="batch",
                      disable=not progress, leave=False):
        out.append(runner.infer(images[start:start + batch_size]))
    return np.concatenate(out) if out else np.zeros((0, runner.metadata.num_outputs), np.float32)


def evaluate(runner: Runner, data: str | os.PathLike, manifest: str | os.PathLike | None = None,
             split: str | None = None, batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Metrics of ``runner``'s model on the labelled images (see
    ``metrics.classification_report``), with calibrated (temperature-
    scaled) probabilities, plus ``ece_uncalibrated``, ``errors`` and the
    reliability table."""
    meta = runner.metadata
    samples = read_samples(data, manifest, split)
    images = load_images(samples, meta.classes, meta.input_size, meta.resize_policy, progress=progress)
    outputs = predict_logits(runner, images.images, batch_size, progress)
    logits = outputs[:, meta.output_columns["logits"]]
    probabilities = softmax(logits, meta.temperature)
    report = classification_report(images.labels, probabilities, meta.classes)
    report["ece_uncalibrated"] = expected_calibration_error(softmax(logits), images.labels) if len(images) else 0.0
    report["temperature"] = meta.temperature
    report["errors"] = [{"path": path, "reason": reason} for path, reason in images.errors]
    report["reliability"] = reliability(probabilities, images.labels)
    report["model"] = {**runner.describe(), "name": meta.name, "classes": meta.classes,
                       "input_size": list(meta.input_size)}
    report["data"] = {"path": str(data), "manifest": str(manifest) if manifest else None, "split": split}
    scores = outputs[:, meta.output_columns["ood_score"]][:, 0] if meta.domain_guard is not None else None
    report["domain_guard"] = guard_summary(scores, meta.domain_guard, images.cell_found)
    return report


def guard_summary(scores: np.ndarray | None, guard: dict | None, cell_found: np.ndarray | None) -> dict[str, Any]:
    """How much of this data the domain guard calls out of distribution:
    the share over its threshold, the share with no white cell found, and the
    score's quartiles. ``ood_scores`` keeps every finite score, for AUROC
    between two evaluations (``metrics.auroc``)."""
    if guard is None or scores is None:
        return {"status": "unavailable"}
    scores = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(scores)
    found = np.ones(len(scores), bool) if cell_found is None else cell_found
    # the classifier's own per-cell verdict, so "out of distribution" has one definition
    ood = np.array([cell_verdict(float(s), bool(f), guard)[1] for s, f in zip(scores, found)], bool)
    return {
        "threshold": guard["threshold"],
        "out_of_distribution_fraction": float(ood.mean()) if len(ood) else 0.0,
        "no_cell_fraction": float((~found).mean()) if len(found) else 0.0,
        "score_quartiles": np.quantile(scores[finite], [0.25, 0.5, 0.75]).round(4).tolist() if finite.any() else None,
        "ood_scores": scores[finite].round(5).tolist(),
    }


#: The files save_plots writes in its folder.
PLOT_NAMES = ("confusion_matrix.png", "reliability.png")


def save_plots(report: dict[str, Any], folder: str | os.PathLike) -> list[Path]:
    """A confusion-matrix PNG and a reliability-diagram PNG in ``folder``."""
    from wbc_edge.errors import require

    require("matplotlib", "matplotlib (for --plots)", "pip install 'wbc-edge[plots]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = report["confusion_matrix"]["labels"]
    matrix = np.array(report["confusion_matrix"]["matrix"])
    present = [i for i in range(len(labels)) if matrix[i].sum() or matrix[:, i].sum()]
    matrix = matrix[np.ix_(present, present)]
    names = [labels[i] for i in present]

    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(names), 0.8 + 0.7 * len(names)))
    row_share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if row_share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {report['accuracy']:.3f}, balanced {report['balanced_accuracy']:.3f}")
    fig.tight_layout()
    confusion_png = write_atomic(folder / PLOT_NAMES[0], writer=lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)

    rel = report["reliability"]
    edges = np.array(rel["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    accuracy = np.array([np.nan if a is None else a for a in rel["accuracy"]])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.bar(centers, np.nan_to_num(accuracy), width=edges[1] - edges[0], edgecolor="black", alpha=0.7,
           label="accuracy per confidence bin")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"ECE {report['ece']:.4f} (T = {report['temperature']:.2f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    reliability_png = write_atomic(folder / PLOT_NAMES[1], writer=lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    return [confusion_png, reliability_png]


def format_report(report: dict[str, Any]) -> str:
    """A readable summary: overall metrics and per-class precision/recall."""
    lines = [
        f"images {report['num_images']}  accuracy {report['accuracy']:.4f}  "
        f"balanced accuracy {report['balanced_accuracy']:.4f}  ECE {report['ece']:.4f} "
        f"(uncalibrated {report['ece_uncalibrated']:.4f})",
        f"{'class':<14}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}",
    ]
    for name, row in report["per_class"].items():
        lines.append(f"{name:<14}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>9}")
    guard = report.get("domain_guard", {})
    if "threshold" in guard:
        lines.append(f"domain guard: {100 * guard['out_of_distribution_fraction']:.1f}% out of distribution "
                     f"(threshold {guard['threshold']:.3g}; no white cell found in "
                     f"{100 * guard['no_cell_fraction']:.1f}%)")
    elif guard:
        lines.append("domain guard: unavailable (this model carries none)")
    if report["errors"]:
        lines.append(f"{len(report['errors'])} unreadable images (listed in the JSON report)")
    return "\n".join(lines)
