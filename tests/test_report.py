"""The differential report's invariants, on real predictions of real cells
mixed with unreadable inputs."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter

import pytest

from tests.conftest import SAMPLE_DIR, sample_rows
from wbc_edge import Classifier, Prediction
from wbc_edge.report import build_report, differential, format_differential, format_images, write_csv, write_json


@pytest.fixture(scope="module")
def run():
    paths = [str(SAMPLE_DIR / r["path"]) for r in sample_rows("test")][::3]
    inputs = [*paths[:10], "missing.jpg", *paths[10:], b"junk"]
    with Classifier.load() as c:
        predictions = c.predict_batch(inputs)
        return inputs, predictions, c.describe(), c.review.to_dict()


def test_every_input_once_and_counts_add_up(run):
    inputs, predictions, model, policy = run
    report = build_report(predictions, model, policy, {"classify_s": 1.0})
    images = report["images"]
    assert len(images) == len(inputs)
    assert [e["path"] for e in images] == [i if isinstance(i, str) else None for i in inputs]
    d = report["differential"]
    classified = [p for p in predictions if p.ok]
    assert d["total"] == len(classified) == sum(d["counts"].values())
    assert d["errors"] == 2 == sum(e["error"] is not None for e in images)
    assert d["inputs"] == len(inputs) == d["total"] + d["errors"]
    assert d["counts"] == {c: Counter(p.label for p in classified)[c] for c in model["classes"]}
    assert d["flagged_for_review"] == sum(p.review for p in classified) == sum(d["flagged_by_class"].values())
    assert math.isclose(sum(d["percent"].values()), 100.0, abs_tol=1e-9)
    for c in model["classes"]:
        assert math.isclose(d["percent"][c], 100 * d["counts"][c] / d["total"])
    assert list(d["counts"]) == model["classes"]
    for key in ("name", "precision", "backend", "classes"):
        assert report["model"][key] == model[key]
    assert report["review_policy"] == policy and report["timings"] == {"classify_s": 1.0}


def test_no_classified_cells():
    d = differential([Prediction.failed("a.jpg", "file not found")], ["x", "y"])
    assert d == {"counts": {"x": 0, "y": 0}, "percent": {"x": 0.0, "y": 0.0}, "flagged_by_class": {"x": 0, "y": 0},
                 "total": 0, "flagged_for_review": 0, "errors": 1, "inputs": 1}


def test_json_and_csv_files(run, tmp_path):
    inputs, predictions, model, policy = run
    report = build_report(predictions, model, policy, {})
    saved = json.loads(write_json(report, tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    rows = list(csv.DictReader(open(write_csv(predictions, model["classes"], tmp_path / "p.csv"))))
    assert len(rows) == len(inputs)
    for row, p in zip(rows, predictions):
        assert row["label"] == (p.label or "") and row["error"] == (p.error or "")
        if p.ok:
            assert math.isclose(sum(float(row[f"p_{c}"]) for c in model["classes"]), 1.0, abs_tol=1e-5)
            assert row["review"] == str(int(p.review))


def test_the_json_file_has_one_line_per_image_and_the_same_content(run, tmp_path):
    """Written fast (one image a line, the C encoder) and still the same
    document, in the same key order, strict JSON even for a non-finite value."""
    inputs, predictions, model, policy = run
    report = build_report(predictions, model, {**policy, "odd": float("nan")}, {})
    text = write_json(report, tmp_path / "report.json").read_text()
    saved = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict JSON: {name}"))
    assert list(saved) == list(report) and saved["review_policy"]["odd"] is None
    assert saved["images"] == json.loads(json.dumps(report["images"]))
    lines = text.splitlines()
    start = lines.index('  "images": [')
    assert [json.loads(line.strip().rstrip(",")) for line in lines[start + 1:start + 1 + len(inputs)]] == saved["images"]


def test_terminal_tables(run):
    inputs, predictions, model, policy = run
    report = build_report(predictions, model, policy, {})
    table = format_differential(report)
    for c in model["classes"]:
        assert c in table
    assert f"{report['differential']['flagged_for_review']} of {report['differential']['total']} cells" in table
    assert "2 inputs could not be classified" in table
    listing = format_images(report, limit=5)
    assert listing.count("\n") == 5 + 1 and f"and {len(inputs) - 5} more" in listing
    assert "error: file not found" in format_images(report)
