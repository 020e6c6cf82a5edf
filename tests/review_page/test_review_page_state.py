"""The review's state without a server: saved as it goes, reopening
continues, undo, sign-off, the exports' contents, no clobbering, atomic writes."""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import os

import pytest

from tests.conftest import REPO
from tests.review_page.support import FakeCamClassifier
from wbc_edge.errors import WbcEdgeError
from wbc_edge.review_page.state import CSV_HEADER, ReviewError, ReviewSession, atomic_write, class_keys, csv_safe


def rows_of(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_decisions_are_saved_at_once_and_reopening_continues(report_path):
    s = ReviewSession(report_path, reviewer="A. Smith")
    a, b = s.flagged[0], s.cells[-1]
    s.decide(a, "monocyte")
    on_disk = json.loads(s.state_path.read_text())
    assert on_disk["decisions"][str(a)]["corrected"] == "monocyte"
    s.decide(b, s.entry(b)["label"])
    again = ReviewSession(report_path)  # a new process: no --reviewer, the saved one is kept
    assert again.resumed and again.reviewer == "A. Smith"
    assert again.decisions == s.decisions and again.history == s.history
    assert again.undo() == b and b not in again.decisions
    assert again.undo() == a and again.decisions == {}
    with pytest.raises(ReviewError) as nothing:
        again.undo()
    assert nothing.value.status == 409
    assert not list(report_path.parent.glob(".*.tmp"))


def test_undo_restores_the_decision_before(report_path):
    s = ReviewSession(report_path, reviewer="r")
    cell = s.cells[0]
    s.decide(cell, "monocyte")
    s.decide(cell, "lymphocyte")
    assert s.current_label(cell) == "lymphocyte"
    s.undo()
    assert s.current_label(cell) == "monocyte"
    s.undo()
    assert s.current_label(cell) == s.entry(cell)["label"] and cell not in s.decisions


def test_sign_off_is_refused_while_flagged_cells_are_unreviewed(report_path):
    s = ReviewSession(report_path, reviewer="A. Smith")
    assert len(s.flagged) >= 2
    s.decide(s.flagged[0], "monocyte")
    with pytest.raises(ReviewError) as refused:
        s.sign_off()
    assert refused.value.status == 409 and f"{len(s.flagged) - 1} of {len(s.flagged)}" in str(refused.value)
    assert s.signed_off is None and not s.reviewed_path.exists()
    for cell in s.flagged[1:]:
        s.decide(cell, s.entry(cell)["label"])
    result = s.sign_off()
    assert result["signed_off"]["by"] == "A. Smith"
    reviewed = json.loads(s.reviewed_path.read_text())
    assert reviewed["review_session"]["status"] == "signed off"
    with pytest.raises(ReviewError) as closed:
        s.decide(s.cells[0], "monocyte")
    assert closed.value.status == 409
    with pytest.raises(ReviewError):
        s.undo()
    assert ReviewSession(report_path).signed_off == result["signed_off"]


def test_corrections_csv_and_the_reviewed_report(report_path):
    report = json.loads(report_path.read_text())
    s = ReviewSession(report_path, reviewer="=HYPERLINK(\"http://x\")")
    changed, approved = s.flagged[0], s.cells[-1]
    new = next(c for c in s.classes if c != s.entry(changed)["label"])
    s.decide(approved, s.entry(approved)["label"])
    s.decide(changed, new)
    written = s.export()["written"]
    assert written["corrections"] == str(report_path.parent / "corrections.csv")
    assert written["reviewed_report"] == str(report_path.parent / "run1.reviewed.json")

    text = (report_path.parent / "corrections.csv").read_text()
    assert text.splitlines()[0] == "path,sha256,predicted,confidence,corrected,reviewer,reviewed_at,model_sha256"
    rows = rows_of(report_path.parent / "corrections.csv")
    assert list(rows[0]) == CSV_HEADER and len(rows) == 2
    by_cell = dict(zip(sorted([changed, approved]), rows))
    for cell, row in by_cell.items():
        entry = report["images"][cell]
        assert row["path"] == str(s.image_path(cell)) and os.path.isabs(row["path"])
        assert row["sha256"] == hashlib.sha256(open(entry["path"], "rb").read()).hexdigest()
        assert row["predicted"] == entry["label"]
        assert abs(float(row["confidence"]) - entry["confidence"]) < 1e-6
        assert row["reviewer"] == "'=HYPERLINK(\"http://x\")"  # neutralised, not a formula
        assert row["reviewed_at"].endswith("Z")
        assert row["model_sha256"] == s.model_sha256 and len(s.model_sha256) == 64
    assert by_cell[changed]["corrected"] == new
    assert by_cell[approved]["corrected"] == by_cell[approved]["predicted"]

    reviewed = json.loads((report_path.parent / "run1.reviewed.json").read_text())
    for key in ("model", "review_policy", "differential", "domain_check"):
        assert reviewed[key] == report[key]  # the original predictions are kept
    for i, (before, after) in enumerate(zip(report["images"], reviewed["images"])):
        assert {k: after[k] for k in before} == before
        if i == changed:
            assert after["reviewed"]["label"] == new and after["reviewed"]["changed"] is True
        elif i == approved:
            assert after["reviewed"]["label"] == before["label"] and after["reviewed"]["changed"] is False
        else:
            assert after["reviewed"] is None
    counts = dict(report["differential"]["counts"])
    counts[report["images"][changed]["label"]] -= 1
    counts[new] += 1
    assert reviewed["reviewed_differential"]["counts"] == counts
    assert abs(sum(reviewed["reviewed_differential"]["percent"].values()) - 100) < 1e-9
    info = reviewed["review_session"]
    assert info["status"] == "in progress" and info["signed_off"] is None
    assert info["flagged"] == len(s.flagged) and info["flagged_reviewed"] == 1 and info["changed"] == 1
    assert info["source_report"]["sha256"] == hashlib.sha256(report_path.read_bytes()).hexdigest()


@pytest.mark.parametrize("text, expected", [
    ("=1+2", "'=1+2"), ("+41", "'+41"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("monocyte", "monocyte"), ("/data/a=b.jpg", "/data/a=b.jpg"), ("", ""), (None, ""),
])
def test_csv_fields_are_neutralised(text, expected):
    assert csv_safe(text) == expected


def test_a_path_that_looks_like_a_formula_is_neutralised(classified, tmp_path, monkeypatch):
    _cells, report = classified
    monkeypatch.chdir(tmp_path)
    name = "=cmd.jpg"
    (tmp_path / name).write_bytes(open(report["images"][0]["path"], "rb").read())
    report = json.loads(json.dumps(report))
    report["images"][0]["path"] = name
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    s = ReviewSession(path, reviewer="r", image_bases=[])  # found nowhere: the report's path is written as it is
    s.decide(0, "monocyte")
    row = next(csv.reader(io.StringIO(s.corrections_csv().splitlines()[1])))
    assert row[0] == "'=cmd.jpg" and row[1] == ""


def test_files_the_review_did_not_write_are_never_overwritten(report_path):
    folder = report_path.parent
    theirs = folder / "corrections.csv"
    theirs.write_text("somebody else's\n")
    with pytest.raises(WbcEdgeError, match="was not written by this review"):
        ReviewSession(report_path)
    assert theirs.read_text() == "somebody else's\n"
    theirs.unlink()

    s = ReviewSession(report_path, reviewer="r")
    s.decide(s.cells[0], "monocyte")
    s.export()
    ReviewSession(report_path)  # its own outputs: reopening is fine
    s.export()  # and exporting again replaces them
    (folder / "run1.reviewed.json").write_text("{}\n")  # edited by hand since
    with pytest.raises(WbcEdgeError, match="was not written by this review"):
        s.export()
    with pytest.raises(WbcEdgeError, match="was not written by this review"):
        ReviewSession(report_path)
    assert (folder / "run1.reviewed.json").read_text() == "{}\n"


def test_a_state_of_another_report_is_refused(report_path):
    s = ReviewSession(report_path, reviewer="r")
    s.decide(s.cells[0], "monocyte")
    report = json.loads(report_path.read_text())
    report["created"] = "2000-01-01T00:00:00Z"
    report_path.write_text(json.dumps(report))
    with pytest.raises(WbcEdgeError, match="review of another report"):
        ReviewSession(report_path)
    (report_path.parent / "run1.review-state.json").write_text('{"not": "ours"}')
    with pytest.raises(WbcEdgeError, match="not a wbc-edge review state"):
        ReviewSession(report_path)



def test_a_damaged_state_is_refused_clearly(report_path):
    s = ReviewSession(report_path, reviewer="r")
    s.decide(s.cells[0], "monocyte")
    state = json.loads(s.state_path.read_text())
    for damage in ({"decisions": {"x": state["decisions"][str(s.cells[0])]}}, {"history": [{"cell": "?"}]},
                   {"decisions": {"99999": state["decisions"][str(s.cells[0])]}}):
        s.state_path.write_text(json.dumps({**state, **damage}))
        with pytest.raises(WbcEdgeError, match="move it away"):
            ReviewSession(report_path)


def test_out_folder_and_bad_reports(report_path, tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(WbcEdgeError, match="not a folder"):
        ReviewSession(report_path, tmp_path / "a-file")
    out = tmp_path / "review" / "run1"
    s = ReviewSession(report_path, out, reviewer="r")  # a folder the user named is made
    s.decide(s.cells[0], "monocyte")
    s.export()
    assert {p.name for p in out.iterdir()} == {"run1.review-state.json", "run1.reviewed.json", "corrections.csv"}
    for bad, why in [("[]", "not a JSON object"), ('{"model": {}}', "no model.classes"),
                     ('{"model": {"classes": ["a"]}, "images": [{"path": "x", "label": "b", "error": null}]}',
                      "not one of the model's classes"), ("{", "not a JSON report")]:
        path = tmp_path / "bad.json"
        path.write_text(bad)
        with pytest.raises(WbcEdgeError, match=why):
            ReviewSession(path)
    with pytest.raises(WbcEdgeError, match="cannot read"):
        ReviewSession(tmp_path / "missing.json")
    for name in (" ", "a\x1b[2Jb", "x" * 101):
        with pytest.raises(WbcEdgeError, match="reviewer"):
            ReviewSession(report_path, out, reviewer=name)
    assert ReviewSession(report_path, out, reviewer="").reviewer == "r"  # none given: the saved reviewer


def test_atomic_write_leaves_the_old_file_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write(target, b"old")
    seen = []
    real_open = os.open

    def spying_open(path, flags, *args):
        seen.append(flags)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", spying_open)

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left
    assert seen and seen[0] & os.O_EXCL and seen[0] & os.O_CREAT


def test_class_keys_are_one_per_class_and_never_the_command_keys():
    keys = class_keys([f"c{i}" for i in range(30)])
    assert len(set(keys.values())) == 30
    assert list(keys.values())[:9] == [str(i) for i in range(1, 10)]
    assert not {"u", "c", " "} & set(keys.values())


def test_cam_notes_a_model_that_differs_from_the_reports(report_path, tmp_path):
    from wbc_edge.review_page.cam import CamProvider

    model = json.loads(report_path.read_text())["model"]
    other = tmp_path / "other.onnx"
    other.write_bytes(b"another model")
    fake = FakeCamClassifier(model["classes"], model_path=other)
    cam = CamProvider({**model, "sha256": "0" * 64}, model["classes"], loader=lambda path: fake)
    data = cam.cam(0, report_path, model["classes"][0])
    assert data["available"] and any("differs from the one that made the report" in n for n in data["notes"])
    missing = CamProvider({**model, "path": str(tmp_path / "gone.onnx")}, model["classes"],
                          loader=lambda path: FakeCamClassifier(model["classes"]))
    assert any("not on this machine" in n for n in missing.cam(0, report_path, model["classes"][0])["notes"])


def test_the_page_ships_as_package_data():
    from importlib import resources

    static = resources.files("wbc_edge.review_page").joinpath("static")
    names = sorted(p.name for p in static.iterdir())
    assert {"index.html", "app.js", "style.css"} <= set(names)
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: k.value for k in call.keywords}
    # setup.py lists its packages with find_packages(include=[...]): run that call here
    from setuptools import find_packages

    finder = kw["packages"]
    assert getattr(finder.func, "id", "") == "find_packages"
    include = ast.literal_eval(next(k.value for k in finder.keywords if k.arg == "include"))
    assert "wbc_edge.review_page" in find_packages(where=str(REPO), include=include)
    data = ast.literal_eval(kw["package_data"])
    import fnmatch

    for name in names:
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in data["wbc_edge.review_page"]), name
    for name in ("index.html", "app.js", "style.css"):  # nothing fetched from elsewhere
        text = static.joinpath(name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
