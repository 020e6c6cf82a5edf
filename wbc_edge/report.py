"""The differential report: what a set of cells holds, which cells a person
must check, and which inputs could not be read.

The JSON report (``wbc-edge classify --out``)::

    {
      "wbc_edge_version": "0.1.0",
      "created": "2026-01-01T12:00:00Z",
      "model": {"name", "precision", "backend", "backend_reason", "classes", "input_size", "temperature", "path",
                "variant"},
      "review_policy": {"threshold", "class_thresholds", "always_review"},
      "images": [{"path", "label", "confidence", "probabilities", "review", "review_reason", "error",
                  "ood_score", "out_of_distribution", "same_file_as"}, ...],
      "differential": {
        "counts": {class: cells}, "percent": {class: % of classified cells},
        "flagged_by_class": {class: cells flagged for review},
        "total": classified cells, "flagged_for_review": cells, "errors": unreadable inputs,
        "inputs": every input (= total + errors + same_file),
        "same_file": inputs that are the same file as an earlier one (only when some are)
      },
      "domain_check": {"status": "ok" | "shift" | "unavailable", "out_of_distribution", "cells",
                       "fraction", "threshold", "shift_fraction", ..., "caveat" (small runs)},
      "timings": {"load_s", "classify_s", "images_per_s"}
    }

Every input appears in ``images`` exactly once, in input order; ``counts`` sum
to ``total`` and ``percent`` to 100 (when ``total`` > 0).

The JSON is strict (no ``NaN`` or ``Infinity``: a non-finite number is written
as ``null``). A file name that is not valid UTF-8 is written with its
undecodable bytes as ``\\xNN`` escapes (:func:`safe_name`). In the CSV, text
cells that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return) are prefixed with ``'`` (OWASP's advice
against CSV injection). On the terminal, control characters in names and
messages are shown escaped, never sent to the terminal.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .prediction import Prediction


def differential(predictions: Sequence[Prediction], classes: Sequence[str],
                 same_file: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Counts and percentages per class over the classified cells, cells
    flagged for review, and inputs that could not be read. ``same_file``:
    indices of predictions whose path is the same file as an earlier input
    (links); they are not counted again, and ``same_file`` says how many."""
    counts = {c: 0 for c in classes}
    flagged = {c: 0 for c in classes}
    errors = 0
    repeats = same_file or {}
    for i, p in enumerate(predictions):
        if i in repeats:
            continue
        if p.error is not None:
            errors += 1
            continue
        counts[p.label] += 1
        flagged[p.label] += int(p.review)
    total = sum(counts.values())
    percent = {c: (100.0 * n / total if total else 0.0) for c, n in counts.items()}
    result = {
        "counts": counts,
        "percent": percent,
        "flagged_by_class": flagged,
        "total": total,
        "flagged_for_review": sum(flagged.values()),
        "errors": errors,
        "inputs": total + errors + len(repeats),
    }
    if repeats:
        result["same_file"] = len(repeats)
    return result


def build_report(predictions: Sequence[Prediction], model: Mapping[str, Any],
                 review_policy: Mapping[str, Any] | None = None,
                 timings: Mapping[str, float] | None = None,
                 domain_guard: Mapping[str, Any] | None = None,
                 same_file: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The full report for one run (see the module docstring); ``domain_guard``
    is the model metadata's guard record (None: the model has no guard);
    ``same_file`` maps the index of an input that is the same file as an
    earlier one (a link) to that one's path."""
    from . import __version__
    from .domain_check import domain_check

    classes = list(model["classes"])
    return {
        "wbc_edge_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {**{k: model.get(k) for k in
                     ("name", "precision", "backend", "backend_reason", "classes", "input_size", "temperature",
                      "path", "variant")},
                  # how the engine shared the CPU (threads, streams), where the runner says
                  **{k: model.get("runner", {}).get(k) for k in ("num_threads", "streams", "threads_per_stream")
                     if k in model.get("runner", {})}},
        "review_policy": dict(review_policy or {}),
        "images": [{**p.to_dict(), "path": safe_name(p.path), "same_file_as": safe_name((same_file or {}).get(i))}
                   for i, p in enumerate(predictions)],
        "differential": differential(predictions, classes, same_file),
        "domain_check": domain_check(predictions, domain_guard),
        "timings": dict(timings or {}),
    }


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Writes the report atomically (a reader never sees half a file; see
    :func:`wbc_edge.atomic.write_atomic`) as strict JSON."""
    from .atomic import write_atomic

    return write_atomic(path, report_json(report))


def report_json(report: Mapping[str, Any]) -> str:
    """The report as strict JSON text: indented, each image on one line.

    One line per image keeps a report of thousands of cells readable line by
    line and lets the json module's C encoder write it (an indented dump of
    the whole list goes through its pure-Python encoder, many times slower).
    """
    document = finite_json(report)
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        return json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    marker = "\x00images\x00"  # written "\u0000images\u0000": no other string of the report can be that
    document = {**document, "images": marker}  # same place among the keys
    head = json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False)
    rows = ",\n    ".join(json.dumps(image, allow_nan=False, ensure_ascii=False) for image in images)
    listing = f"[\n    {rows}\n  ]" if images else "[]"
    return head.replace(json.dumps(marker), listing, 1) + "\n"


def write_csv(predictions: Iterable[Prediction], classes: Sequence[str], path: str | os.PathLike,
              same_file: Mapping[int, str] | None = None) -> Path:
    """One row per input: path, label, confidence, review, review_reason,
    error, ood_score, out_of_distribution (empty where unknown), one
    ``p_<class>`` column per class, then same_file_as (the earlier input this
    path is the same file as, else empty). Written whole, atomically; text
    cells are neutralised against spreadsheet formulas (:func:`csv_text`)."""
    from .atomic import write_atomic

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "confidence", "review", "review_reason", "error",
                     "ood_score", "out_of_distribution", *(csv_text(f"p_{c}") for c in classes), "same_file_as"])
    repeats = same_file or {}
    for i, p in enumerate(predictions):
        probabilities = [_number(p.probabilities.get(c)) for c in classes] if p.probabilities else [""] * len(classes)
        writer.writerow([csv_text(safe_name(p.path) or ""), csv_text(p.label or ""), _number(p.confidence),
                         int(p.review), csv_text(p.review_reason or ""), csv_text(safe_name(p.error) or ""),
                         _number(p.ood_score),
                         "" if p.out_of_distribution is None else int(p.out_of_distribution), *probabilities,
                         csv_text(safe_name(repeats.get(i)) or "")])
    return write_atomic(path, buffer.getvalue())


#: What a spreadsheet takes for the start of a formula (OWASP, CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A text cell that a spreadsheet shows as text: one starting with a
    formula character gets a leading ``'``."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def safe_name(text: str | None) -> str | None:
    """A file name (or message) as valid Unicode text: bytes that were not
    valid UTF-8 (held by Python as lone surrogates, ``os.fsdecode``'s
    ``surrogateescape``) become ``\\xNN``."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") \
            if _only_escapes(text) else text.encode("utf-8", "backslashreplace").decode("ascii")


def _only_escapes(text: str) -> bool:
    try:
        text.encode("utf-8", "surrogateescape")
        return True
    except UnicodeEncodeError:
        return False


def terminal_text(text: str | None) -> str:
    """Text safe to print: invalid UTF-8 as ``\\xNN`` and control or
    formatting characters (escape sequences, carriage returns, bidi
    overrides) as ``\\xNN`` / ``\\uNNNN``, so a file name cannot repaint
    the terminal."""
    text = safe_name(text) or ""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def finite_json(value):
    """``value`` with every non-finite float (NaN, inf) replaced by None, so
    that it can be written as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "item"):  # a numpy scalar
        return finite_json(value.item())
    return value


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6f}"


def format_differential(report: Mapping[str, Any]) -> str:
    """The differential as a short terminal table."""
    d = report["differential"]
    classes = report["model"]["classes"]
    width = max(12, *(len(c) for c in classes)) + 2
    lines = [f"{'class':<{width}}{'cells':>7}{'%':>8}{'review':>8}"]
    for c in classes:
        lines.append(f"{terminal_text(c):<{width}}{d['counts'][c]:>7}{d['percent'][c]:>8.1f}{d['flagged_by_class'][c]:>8}")
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
            lines.append(f"{name:<{width}}  {'-':<13}{'-':>6}  error: {terminal_text(e['error'])}")
        else:
            note = terminal_text(e["review_reason"]) if e["review"] else ""
            confidence = "-" if e["confidence"] is None else f"{e['confidence']:.3f}"
            lines.append(f"{name:<{width}}  {terminal_text(e['label']):<13}{confidence:>6}  {note}".rstrip())
    if len(shown) < len(images):
        lines.append(f"... and {len(images) - len(shown)} more (write them all with --out or --csv)")
    return "\n".join(lines)


def format_errors(report: Mapping[str, Any], limit: int = 20) -> str:
    """The inputs that could not be classified, with the reason."""
    failed = [e for e in report["images"] if e["error"] is not None]
    lines = [f"  {_short(e['path'])}: {terminal_text(e['error'])}" for e in failed[:limit]]
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more (see --out or --csv)")
    return "\n".join(lines)


def _short(path: str | None, width: int = 48) -> str:
    text = terminal_text(path) if path is not None else "<in memory>"
    return text if len(text) <= width else "..." + text[-(width - 3):]
