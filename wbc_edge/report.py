"""The differential report: what a set of cells holds, which cells a person
must check, and which inputs could not be read.

The JSON report (``wbc-edge classify --out``)::

    {
      "wbc_edge_version": "0.1.0",
      "created": "2026-01-01T12:00:00Z",
      "model": {"name", "precision", "backend", "classes", "input_size", "temperature", "path", "variant"},
      "review_policy": {"threshold", "class_thresholds", "always_review"},
      "images": [{"path", "label", "confidence", "probabilities", "review", "review_reason", "error",
                  "ood_score", "out_of_distribution"}, ...],
      "differential": {
        "counts": {class: cells}, "percent": {class: % of classified cells},
        "flagged_by_class": {class: cells flagged for review},
        "total": classified cells, "flagged_for_review": cells, "errors": unreadable inputs,
        "inputs": every input (= total + errors)
      },
      "domain_check": {"status": "ok" | "shift" | "unavailable", "out_of_distribution", "cells",
                       "fraction", "threshold", "shift_fraction", ..., "caveat" (small runs)},
      "timings": {"load_s", "classify_s", "images_per_s"}
    }

Every input appears in ``images`` exactly once, in input order; ``counts`` sum
to ``total`` and ``percent`` to 100 (when ``total`` > 0).
"""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .prediction import Prediction


def differential(predictions: Sequence[Prediction], classes: Sequence[str]) -> dict[str, Any]:
    """Counts and percentages per class over the classified cells, cells
    flagged for review, and inputs that could not be read."""
    counts = {c: 0 for c in classes}
    flagged = {c: 0 for c in classes}
    errors = 0
    for p in predictions:
        if p.error is not None:
            errors += 1
            continue
        counts[p.label] += 1
        flagged[p.label] += int(p.review)
    total = sum(counts.values())
    percent = {c: (100.0 * n / total if total else 0.0) for c, n in counts.items()}
    return {
        "counts": counts,
        "percent": percent,
        "flagged_by_class": flagged,
        "total": total,
        "flagged_for_review": sum(flagged.values()),
        "errors": errors,
        "inputs": total + errors,
    }


def build_report(predictions: Sequence[Prediction], model: Mapping[str, Any],
                 review_policy: Mapping[str, Any] | None = None,
                 timings: Mapping[str, float] | None = None,
                 domain_guard: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full report for one run (see the module docstring); ``domain_guard``
    is the model metadata's guard record (None: the model has no guard)."""
    from . import __version__
    from .domain_check import domain_check

    classes = list(model["classes"])
    return {
        "wbc_edge_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {k: model.get(k) for k in
                  ("name", "precision", "backend", "classes", "input_size", "temperature", "path", "variant")},
        "review_policy": dict(review_policy or {}),
        "images": [p.to_dict() for p in predictions],
        "differential": differential(predictions, classes),
        "domain_check": domain_check(predictions, domain_guard),
        "timings": dict(timings or {}),
    }


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Writes the report atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def write_csv(predictions: Iterable[Prediction], classes: Sequence[str], path: str | os.PathLike) -> Path:
    """One row per input: path, label, confidence, review, review_reason,
    error, ood_score, out_of_distribution (empty where unknown), then one
    ``p_<class>`` column per class."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "confidence", "review", "review_reason", "error",
                         "ood_score", "out_of_distribution", *(f"p_{c}" for c in classes)])
        for p in predictions:
            probabilities = [f"{p.probabilities[c]:.6f}" for c in classes] if p.probabilities else [""] * len(classes)
            writer.writerow([p.path or "", p.label or "", "" if p.confidence is None else f"{p.confidence:.6f}",
                             int(p.review), p.review_reason or "", p.error or "",
                             "" if p.ood_score is None else f"{p.ood_score:.6f}",
                             "" if p.out_of_distribution is None else int(p.out_of_distribution), *probabilities])
    return path


def format_differential(report: Mapping[str, Any]) -> str:
    """The differential as a short terminal table."""
    d = report["differential"]
    classes = report["model"]["classes"]
    width = max(12, *(len(c) for c in classes)) + 2
    lines = [f"{'class':<{width}}{'cells':>7}{'%':>8}{'review':>8}"]
    for c in classes:
        lines.append(f"{c:<{width}}{d['counts'][c]:>7}{d['percent'][c]:>8.1f}{d['flagged_by_class'][c]:>8}")
    lines.append(f"{'total':<{width}}{d['total']:>7}{100.0 if d['total'] else 0.0:>8.1f}{d['flagged_for_review']:>8}")
    summary = f"{d['flagged_for_review']} of {d['total']} cells flagged for review"
    summary += f"; {d['errors']} input{'s' if d['errors'] != 1 else ''} could not be classified" if d["errors"] else ""
    lines += ["", summary]
    return "\n".join(lines)


def format_images(report: Mapping[str, Any], limit: int | None = None) -> str:
    """One line per input (label, confidence, review reason or error)."""
    images = report["images"]
    shown = images if limit is None else images[:limit]
    width = min(48, max([5] + [len(_short(e["path"])) for e in shown]))
    lines = [f"{'image':<{width}}  {'label':<13}{'conf':>6}  review / error"]
    for e in shown:
        name = _short(e["path"])
        if e["error"] is not None:
            lines.append(f"{name:<{width}}  {'-':<13}{'-':>6}  error: {e['error']}")
        else:
            note = e["review_reason"] if e["review"] else ""
            lines.append(f"{name:<{width}}  {e['label']:<13}{e['confidence']:>6.3f}  {note}".rstrip())
    if len(shown) < len(images):
        lines.append(f"... and {len(images) - len(shown)} more (write them all with --out or --csv)")
    return "\n".join(lines)


def format_errors(report: Mapping[str, Any], limit: int = 20) -> str:
    """The inputs that could not be classified, with the reason."""
    failed = [e for e in report["images"] if e["error"] is not None]
    lines = [f"  {_short(e['path'])}: {e['error']}" for e in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more (see --out or --csv)")
    return "\n".join(lines)


def _short(path: str | None, width: int = 48) -> str:
    text = path if path is not None else "<in memory>"
    return text if len(text) <= width else "..." + text[-(width - 3):]
