"""`wbc-edge classify`: folders and files, the report, exit codes."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SAMPLE_DIR, sample_rows
from wbc_edge import models
from wbc_edge.backends import library_available
from wbc_edge.cli import main

EXAMPLES = REPO / "examples"


def classify(capsys, *args):
    code = main(["classify", *map(str, args), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def mixed_folder(tmp_path):
    """Real cells in a folder tree with other files: what a lab share looks like."""
    root = tmp_path / "cells"
    (root / "day1").mkdir(parents=True)
    (root / "day2" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    rows = sample_rows("test")
    placed = []
    for i, r in enumerate(rows[:9]):
        target = [root, root / "day1", root / "day2" / "deep"][i % 3] / f"cell{i}{['.jpg', '.JPEG', '.jpeg'][i % 3]}"
        shutil.copy(SAMPLE_DIR / r["path"], target)
        placed.append(target)
    (root / "notes.txt").write_text("not an image, not scanned")
    (root / "day1" / "scan.pdf").write_bytes(b"%PDF-1.4")
    broken = root / "day2" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root, placed, broken


def test_examples_quick_start(capsys, tmp_path):
    out_json = tmp_path / "report.json"
    code, out, err = classify(capsys, EXAMPLES, "--out", out_json)
    assert code == 0
    report = json.loads(out_json.read_text())
    names = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix == ".jpg")
    assert sorted(os.path.basename(e["path"]) for e in report["images"]) == names
    assert report["differential"]["total"] == len(names) and report["differential"]["errors"] == 0
    assert "16 inputs, 16 classified" in out
    for c in report["model"]["classes"]:
        assert c in out
    assert os.path.basename(report["images"][0]["path"]) in out  # per-image lines for a small run
    assert "classifying" not in err  # no progress bar when stderr is no terminal


def test_folders_and_files_each_input_once(capsys, tmp_path, mixed_folder):
    root, placed, broken = mixed_folder
    note = root / "notes.txt"
    missing = tmp_path / "no-such-cell.jpg"
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    code, _out, err = classify(capsys, root, note, placed[0], missing, root / "empty", "--out", out_json,
                              "--csv", out_csv, "--batch-size", "4")
    assert code == 0
    report = json.loads(out_json.read_text())
    paths = [e["path"] for e in report["images"]]
    expected = {str(p) for p in placed} | {str(broken), str(note), str(missing)}
    assert sorted(paths) == sorted(expected)  # each once: placed[0] named twice, scan.pdf ignored
    assert "named more than once" in err and "empty: no image files" in err
    errors = {e["path"]: e["error"] for e in report["images"] if e["error"]}
    assert errors[str(missing)] == "file not found"
    assert errors[str(note)] == "not a recognized image format"  # named explicitly: attempted
    assert "not a recognized image format" in errors[str(broken)] or "truncated" in errors[str(broken)]
    d = report["differential"]
    assert (d["total"], d["errors"], d["inputs"]) == (len(placed), 3, len(placed) + 3)
    assert sum(d["counts"].values()) == d["total"]
    assert math.isclose(sum(d["percent"].values()), 100.0)
    rows = list(csv.DictReader(open(out_csv)))
    assert [r["path"] for r in rows] == paths


def test_review_options(capsys, tmp_path):
    out_json = tmp_path / "r.json"
    code, *_ = classify(capsys, EXAMPLES, "--out", out_json, "--review-threshold", "0", "--always-review", "none")
    report = json.loads(out_json.read_text())
    assert code == 0 and report["differential"]["flagged_for_review"] == 0
    assert report["review_policy"] == {"threshold": 0.0, "class_thresholds": {}, "always_review": []}
    classes = report["model"]["classes"]
    code, *_ = classify(capsys, EXAMPLES, "--out", out_json, "--review-threshold", "0",
                        "--always-review", ",".join(classes))
    assert json.loads(out_json.read_text())["differential"]["flagged_for_review"] == 16
    code, _out, err = classify(capsys, EXAMPLES, "--always-review", "blasts")
    assert code == 2 and "blasts" in err


def test_many_inputs_print_the_table_and_the_errors(capsys, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for r in sample_rows("test")[:24]:
        shutil.copy(SAMPLE_DIR / r["path"], folder)
    (folder / "zz_broken.jpg").write_bytes(b"")
    code, out, _err = classify(capsys, folder)
    assert code == 0
    assert "zz_broken.jpg: empty file" in out
    assert "conf" not in out  # no per-image listing above the auto limit


def test_nothing_to_run_exits_2(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _out, err = classify(capsys, empty)
    assert code == 2 and "no image files found" in err
    code, _out, err = classify(capsys, EXAMPLES, "--model", tmp_path / "missing.onnx")
    assert code == 2 and "not found" in err
    code, _out, err = classify(capsys, EXAMPLES, "--batch-size", "0")
    assert code == 2 and "--batch-size" in err
    code, _out, err = classify(capsys, EXAMPLES, "--out", tmp_path / "no" / "dir" / "r.json")
    assert code == 2 and "does not exist" in err
    code, _out, err = classify(capsys, EXAMPLES, "--backend", "torch", "--precision", "int8")
    assert code == 2 and "INT8 runs on onnxruntime" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", str(EXAMPLES), "--precision", "fp8"])
    assert exit_info.value.code == 2


def test_tensorrt_without_an_engine_exits_2_saying_what_to_do(capsys):
    code, _out, err = classify(capsys, EXAMPLES, "--backend", "tensorrt")
    assert code == 2
    if library_available("tensorrt"):  # installed: an engine must be built for this GPU first
        assert "wbc-edge build-engine --onnx" in err
    else:  # missing: the install command
        assert "pip install" in err and "tensorrt" in err


def test_precision_not_shipped_names_the_command(capsys):
    missing = [p for p in ("fp16", "int8", "fp32")
               if models.variant_for(p, "onnxruntime") not in models.shipped_models()]
    if not missing:
        pytest.skip("every precision is shipped in this install")
    code, _out, err = classify(capsys, EXAMPLES, "--precision", missing[0])
    assert code == 2 and ("wbc-edge calibrate" in err or "wbc-edge export" in err)


def test_console_script_runs_on_the_examples(tmp_path):
    """The README's first command, as a user runs it (a new process, stdout a pipe)."""
    script = Path(sys.executable).parent / "wbc-edge"
    command = [str(script)] if script.is_file() else [
        sys.executable, "-c", "import sys; from wbc_edge.cli import main; sys.exit(main())"]
    result = subprocess.run([*command, "classify", "examples/"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "16 inputs, 16 classified" in result.stdout and "flagged for review" in result.stdout


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="runs as root here, and root lists folders whatever their permissions")
def test_unreadable_subfolder_is_reported(capsys, tmp_path, mixed_folder):
    root, _placed, _broken = mixed_folder
    locked = root / "day1"
    out_json = tmp_path / "r.json"
    locked.chmod(0)
    try:
        code, _out, _err = classify(capsys, root, "--out", out_json)
    finally:
        locked.chmod(0o755)
    assert code == 0
    errors = {e["path"]: e["error"] for e in json.loads(out_json.read_text())["images"] if e["error"]}
    assert "folder cannot be read" in errors[str(locked)]
