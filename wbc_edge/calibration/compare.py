"""Parity of two models on the same labelled images (FP32 vs FP16 vs INT8, ONNX vs PyTorch).

Reports top-1 agreement, accuracy and balanced accuracy of each, the change of
each class's recall, and the largest change of a (temperature-scaled)
probability, as a JSON-ready dict and a readable table. Each model uses its own
metadata's temperature, as deployed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wbc_edge.errors import WbcEdgeError

#: The parity targets of FP16 and INT8 models vs the FP32 model, on the test split.
PARITY_TARGETS = {
    "fp16": {"min_agreement": 0.999, "max_balanced_accuracy_drop": None},
    "int8": {"min_agreement": 0.995, "max_balanced_accuracy_drop": 0.005},
}
BATCH = 64


def run_logits(runner, images: np.ndarray, batch: int = BATCH, progress: bool = False, desc: str = "") -> np.ndarray:
    """A runner's float32 class logits for uint8 [N, H, W, 3] images, in
    batches (a domain guard's ood_score column, where the model has one, is
    left out: parity is about the classes)."""
    from tqdm import tqdm

    out = []
    for start in tqdm(range(0, len(images), batch), desc=desc or "inference", unit="batch",
                      disable=not progress, leave=False):
        out.append(runner.infer(images[start:start + batch]))
    classes = runner.metadata.num_classes
    return np.concatenate(out)[:, :classes] if out else np.zeros((0, classes), np.float32)


def parity_report(logits_a: np.ndarray, logits_b: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                  temperature_a: float = 1.0, temperature_b: float = 1.0,
                  paths: Sequence[str] | None = None) -> dict:
    """Compares model B with model A (the reference) on the same images."""
    from wbc_edge.metrics import classification_report, softmax

    if logits_a.shape != logits_b.shape or len(labels) != len(logits_a):
        raise WbcEdgeError(f"logits {logits_a.shape} and {logits_b.shape} for {len(labels)} labels do not line up")
    probs_a, probs_b = softmax(logits_a, temperature_a), softmax(logits_b, temperature_b)
    report_a = classification_report(labels, probs_a, classes)
    report_b = classification_report(labels, probs_b, classes)
    pred_a, pred_b = probs_a.argmax(axis=1), probs_b.argmax(axis=1)
    differ = np.flatnonzero(pred_a != pred_b)
    recall_change = {
        name: report_b["per_class"][name]["recall"] - stats["recall"]
        for name, stats in report_a["per_class"].items()
    }
    delta = np.abs(probs_a.astype(np.float64) - probs_b)
    return {
        "num_images": len(labels),
        "top1_agreement": float(1.0 - len(differ) / max(1, len(labels))),
        "num_disagreements": len(differ),
        "a": _summary(report_a),
        "b": _summary(report_b),
        "accuracy_change": report_b["accuracy"] - report_a["accuracy"],
        "balanced_accuracy_change": report_b["balanced_accuracy"] - report_a["balanced_accuracy"],
        "recall_change": recall_change,
        "max_abs_prob_diff": float(delta.max()) if delta.size else 0.0,
        "mean_abs_prob_diff": float(delta.mean()) if delta.size else 0.0,
        "max_abs_logit_diff": float(np.abs(logits_a.astype(np.float64) - logits_b).max()) if delta.size else 0.0,
        "disagreements": [
            {"image": str(paths[i]) if paths is not None else int(i), "label": classes[labels[i]],
             "a": classes[pred_a[i]], "b": classes[pred_b[i]],
             "p_a": float(probs_a[i, pred_a[i]]), "p_b": float(probs_b[i, pred_b[i]])}
            for i in differ
        ],
        "per_class_a": report_a["per_class"],
        "per_class_b": report_b["per_class"],
    }


def _summary(report: dict) -> dict:
    return {k: report[k] for k in ("accuracy", "balanced_accuracy", "ece")}


def check_targets(report: dict, min_agreement: float | None = None,
                  max_balanced_accuracy_drop: float | None = None) -> list[str]:
    """The targets a parity report misses (empty: all met)."""
    missed = []
    if min_agreement is not None and report["top1_agreement"] < min_agreement:
        missed.append(f"top-1 agreement {report['top1_agreement']:.2%} < {min_agreement:.2%}")
    drop = -report["balanced_accuracy_change"]
    if max_balanced_accuracy_drop is not None and drop > max_balanced_accuracy_drop + 1e-12:
        missed.append(f"balanced-accuracy drop {drop * 100:.2f} points > {max_balanced_accuracy_drop * 100:.2f}")
    return missed


def load_labelled_images(data: str | os.PathLike, manifest: str | os.PathLike | None, split: str | None,
                         meta, progress: bool = True):
    """The labelled images, preprocessed for ``meta`` (datasets.ImageSet)."""
    from wbc_edge.datasets import load_images, read_samples

    samples = read_samples(data, manifest, split)
    images = load_images(samples, meta.classes, meta.input_size, policy=meta.resize_policy, progress=progress,
                         desc=f"reading {split or 'all'} images")
    if len(images) == 0:
        raise WbcEdgeError(f"{data}: none of the {len(samples)} images could be read")
    return images


def compare_models(model_a: str | os.PathLike, model_b: str | os.PathLike, data: str | os.PathLike,
                   manifest: str | os.PathLike | None = None, split: str | None = None,
                   progress: bool = True, **runner_options) -> dict:
    """Runs both models (any backend ``load_runner`` picks by file type) on the
    labelled images and returns :func:`parity_report` with what was compared."""
    from wbc_edge.backends import load_runner

    with load_runner(model_a, **runner_options) as a, load_runner(model_b, **runner_options) as b:
        a.metadata.check_compatible(b.metadata, what=f"{model_a} vs {model_b}")
        images = load_labelled_images(data, manifest, split, a.metadata, progress)
        logits_a = run_logits(a, images.images, progress=progress, desc=Path(model_a).name)
        logits_b = run_logits(b, images.images, progress=progress, desc=Path(model_b).name)
        report = parity_report(logits_a, logits_b, images.labels, images.classes,
                               a.metadata.temperature, b.metadata.temperature,
                               relative_paths(images.paths, data))
        report["models"] = {"a": _describe(model_a, a), "b": _describe(model_b, b)}
    report["data"] = {"root": str(data), "manifest": str(manifest) if manifest else None, "split": split,
                      "unreadable": [{"path": p, "reason": r} for p, r in images.errors]}
    return report


def relative_paths(paths: Sequence[str], root) -> list[str]:
    """Image paths relative to the data root, for reports."""
    def relative(path: str) -> str:
        try:
            return os.path.relpath(path, root)
        except ValueError:  # another drive
            return path
    return [relative(p) for p in paths]


def _describe(path, runner) -> dict:
    meta = runner.metadata
    return {"path": str(path), "backend": runner.name, "precision": meta.precision,
            "quantization": meta.quantization, "size_bytes": Path(path).stat().st_size}


def format_report(report: dict) -> str:
    """The parity report as a readable table."""
    models = report.get("models", {})
    name = {k: Path(v["path"]).name + f" ({v['backend']}, {v['precision']})" for k, v in models.items()}
    a, b = report["a"], report["b"]
    data = report.get("data", {})
    lines = [
        f"A: {name.get('a', 'A')}",
        f"B: {name.get('b', 'B')}",
        f"{report['num_images']} images" + (f" (split {data['split']})" if data.get("split") else "")
        + (f" from {data['root']}" if data.get("root") else ""),
        "",
        f"{'':22}{'A':>9}{'B':>9}{'B - A':>12}",
        f"{'accuracy':22}{a['accuracy']:9.4f}{b['accuracy']:9.4f}{report['accuracy_change'] * 100:+9.2f} pt",
        f"{'balanced accuracy':22}{a['balanced_accuracy']:9.4f}{b['balanced_accuracy']:9.4f}"
        f"{report['balanced_accuracy_change'] * 100:+9.2f} pt",
        f"{'ECE':22}{a['ece']:9.4f}{b['ece']:9.4f}",
        f"{'top-1 agreement':22}{report['top1_agreement']:9.2%}   ({report['num_disagreements']} of "
        f"{report['num_images']} differ)",
        f"{'max |delta prob|':22}{report['max_abs_prob_diff']:9.4f}   (mean {report['mean_abs_prob_diff']:.2g})",
        f"{'max |delta logit|':22}{report['max_abs_logit_diff']:9.4f}",
        "",
        f"{'recall per class':22}{'A':>9}{'B':>9}{'B - A':>12}",
    ]
    for cls, change in report["recall_change"].items():
        ra, rb = report["per_class_a"][cls]["recall"], report["per_class_b"][cls]["recall"]
        lines.append(f"  {cls:20}{ra:9.4f}{rb:9.4f}{change * 100:+9.2f} pt")
    if report["disagreements"]:
        lines += ["", "disagreements (label: A -> B):"]
        for d in report["disagreements"][:20]:
            lines.append(f"  {d['image']}  {d['label']}: {d['a']} ({d['p_a']:.2f}) -> {d['b']} ({d['p_b']:.2f})")
        if len(report["disagreements"]) > 20:
            lines.append(f"  ... {len(report['disagreements']) - 20} more in the JSON report")
    return "\n".join(lines)
