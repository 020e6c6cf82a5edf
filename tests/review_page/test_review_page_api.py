"""The review page's server without a browser: the token, traversal attempts
(plain, encoded, absolute, symlinks), POST validation, no CORS, the Host
check and the address it binds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from tests.review_page.support import EXAMPLES, WBC_EDGE, FakeCamClassifier, start

SECRET = b"TOP-SECRET-not-a-cell-7f3a"


@pytest.fixture
def secrets_around(report_path):
    """Files the server must never serve: a text file and a real image
    beside the report and one folder up, neither listed in the report."""
    folder = report_path.parent
    (folder / "secret.txt").write_bytes(SECRET)
    (folder.parent / "secret.txt").write_bytes(SECRET)
    shutil.copy(EXAMPLES / "BA_461900.jpg", folder / "unlisted.jpg")
    return folder


def test_every_url_needs_the_token(running):
    assert running.get("")[0] == 200
    assert running.get("api/session")[0] == 200
    wrong = ("y" if running.token[0] == "x" else "x") + running.token[1:]  # never the token itself
    for path in ["/", "/api/session", f"/{wrong}/", f"/{wrong}/api/session", f"/{wrong}/img/0",
                 f"/{running.token[:-1]}/", f"/{running.token}x/img/0", "/static/app.js", "/img/0",
                 f"/api/session?token={running.token}", f"//{running.token}/api/session"]:
        code, _, body = running.request("GET", path)
        assert code == 404, path
        assert b"cells" not in body and b"\xff\xd8" not in body[:2]
    code, headers, _ = running.request("GET", f"/{running.token}")
    assert code == 308 and headers["location"] == f"/{running.token}/"
    assert len(running.token) >= 32
    # a new run has a new token
    other = start(running.session.report_path, running.session.out_dir)
    try:
        assert other.token != running.token
        assert other.request("GET", f"/{running.token}/api/session")[0] == 404
    finally:
        other.stop()


def test_traversal_never_reads_a_file_outside_the_reports_images(running, secrets_around):
    t = running.token
    attempts = [
        f"/{t}/img/../secret.txt", f"/{t}/img/../../secret.txt", f"/{t}/img/../../../../../../etc/passwd",
        f"/{t}/img/%2e%2e/secret.txt", f"/{t}/img/%2e%2e%2fsecret.txt", f"/{t}/img/%2E%2E%2F%2E%2E%2Fsecret.txt",
        f"/{t}/img/..%2f..%2fsecret.txt", f"/{t}/img/%252e%252e%252fsecret.txt", f"/{t}/img/..%5csecret.txt",
        f"/{t}/img//etc/passwd", f"/{t}/img/%2fetc%2fpasswd", f"/{t}/img/{secrets_around}/secret.txt",
        f"/{t}/img/{secrets_around}/unlisted.jpg", f"/{t}/img/unlisted.jpg", f"/{t}/img/0/../../secret.txt",
        f"/{t}/img/0%2f..%2f..%2fsecret.txt", f"/{t}/img/-1", f"/{t}/img/99999", f"/{t}/img/0x0", f"/{t}/img/1.0",
        f"/{t}/img/%00", f"/{t}/static/../../secret.txt", f"/{t}/static/%2e%2e%2fstate.py",
        f"/{t}/static/..%2fstate.py", f"/{t}/static/state.py", f"/{t}/static/index.html/../../app.py",
        f"/{t}/static/%2e%2e/%2e%2e/secret.txt", f"/{t}/download/..%2fsecret.txt",
        f"/{t}/download/run1.review-state.json", f"/{t}/download/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        f"/{t}/../secret.txt", f"/{t}/%2e%2e/secret.txt", f"/{t}/api/cam/../../secret.txt",
        f"/{t}/api/cam/%2e%2e%2fsecret.txt",
        f"http://127.0.0.1:{running.port}/{t}/img/..%2f..%2fsecret.txt",
    ]
    unlisted = (secrets_around / "unlisted.jpg").read_bytes()
    passwd = open("/etc/passwd", "rb").read() if os.path.exists("/etc/passwd") else b"root:"
    for path in attempts:
        code, _, body = running.request("GET", path)
        assert 400 <= code < 500, (path, code)
        assert SECRET not in body and unlisted[:64] not in body and passwd[:32] not in body, path
    # while the listed images are served
    code, headers, body = running.get("img/0")
    assert code == 200 and headers["content-type"] == "image/jpeg" and body[:3] == b"\xff\xd8\xff"
    assert body == open(running.session.image_path(0), "rb").read()


def test_a_listed_image_swapped_for_a_symlink_to_elsewhere_is_refused(running, secrets_around):
    path = running.session.image_path(1)
    assert running.get("img/1")[0] == 200
    os.unlink(path)
    os.symlink(secrets_around / "secret.txt", path)
    code, _, body = running.get("img/1")
    assert code == 404 and SECRET not in body
    os.unlink(path)
    os.symlink(secrets_around / "unlisted.jpg", path)  # even an image, when it is not the one listed
    code, _, body = running.get("img/1")
    assert code == 404 and body[:2] != b"\xff\xd8"


def test_a_report_that_lists_a_non_image_or_a_symlink_out_serves_no_secret(classified, tmp_path):
    _cells, report = classified
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    os.symlink(secret, tmp_path / "cell.jpg")
    crafted = json.loads(json.dumps(report))
    first = crafted["images"][0]
    crafted["images"] += [{**first, "path": str(secret)}, {**first, "path": str(tmp_path / "cell.jpg")},
                          {**first, "path": "/etc/passwd"}, {**first, "path": "../" * 12 + "etc/passwd"}]
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps(crafted))
    server = start(path)
    try:
        n = len(report["images"])
        for cell in range(n, n + 4):
            code, _, body = server.get(f"img/{cell}")
            assert code == 404 and SECRET not in body and b"root:" not in body
        assert server.get("img/0")[0] == 200
    finally:
        server.stop()


def test_relative_report_paths_resolve_from_the_current_folder_then_the_reports(classified, tmp_path, monkeypatch):
    cells, report = classified
    relative = json.loads(json.dumps(report))
    for e in relative["images"]:
        e["path"] = os.path.join("cells", os.path.basename(e["path"]))
    folder = tmp_path / "elsewhere"
    shutil.copytree(cells, folder / "cells")
    path = folder / "rel.json"
    path.write_text(json.dumps(relative))
    monkeypatch.chdir(tmp_path)  # not the report's folder: found beside the report
    server = start(path)
    try:
        assert server.session.missing == []
        code, _, body = server.get("img/2")
        assert code == 200 and body == (folder / relative["images"][2]["path"]).read_bytes()
    finally:
        server.stop()


def test_posts_are_validated(running):
    session = running.session
    cell = session.cells[0]
    cases = [
        ({"cell": cell, "corrected": "not-a-class"}, 422),
        ({"cell": cell, "corrected": "Monocyte"}, 422),
        ({"cell": 99999, "corrected": "monocyte"}, 404),
        ({"cell": -1, "corrected": "monocyte"}, 404),
        ({"cell": str(cell), "corrected": "monocyte"}, 400),
        ({"cell": True, "corrected": "monocyte"}, 400),
        ({"cell": 1.0, "corrected": "monocyte"}, 400),
        ({"cell": cell, "corrected": 3}, 400),
        ({"cell": cell, "corrected": None}, 400),
        ({"cell": cell}, 400),
        ({"corrected": "monocyte"}, 400),
        ({"cell": cell, "corrected": "monocyte", "reviewer": "mallory"}, 400),
        ([cell, "monocyte"], 400),
    ]
    for body, status in cases:
        code, _, data = running.post("api/decision", body)
        assert code == status, (body, code, data)
        assert "error" in json.loads(data)
    raw = [
        (b'{"cell": 0, "corrected": "monocyte"', {"Content-Type": "application/json"}, 400),
        (b"\xff\xfe", {"Content-Type": "application/json"}, 400),
        (b"cell=0&corrected=monocyte", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (b'{"cell": 0, "corrected": "monocyte"}', {"Content-Type": "text/plain"}, 415),
        (b'{"cell": 0, "corrected": "monocyte"}', {}, 415),
        (b'{"cell": 0, "corrected": "monocyte"}', {"Content-Type": "application/json", "Origin": "http://evil.example"},
         403),
        (b'{"cell": 0, "corrected": "monocyte"}', {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
         403),
        (b'{"cell": 0, "corrected": "' + b"a" * 20000 + b'"}', {"Content-Type": "application/json"}, 413),
    ]
    for data, headers, status in raw:
        code, _, body = running.request("POST", f"/{running.token}/api/decision", data, headers)
        assert code == status, (data[:40], headers, code, body)
    for rest in ("api/undo", "api/export", "api/signoff"):
        assert running.post(rest, {"x": 1})[0] == 400
        assert running.request("POST", f"/{running.token}/{rest}", b"{}", {"Content-Type": "text/plain"})[0] == 415
    assert running.get("api/decision")[0] == 405
    assert running.request("PUT", f"/{running.token}/api/decision", {"cell": cell, "corrected": "monocyte"})[0] == 405
    assert running.request("DELETE", f"/{running.token}/api/session")[0] == 405
    unreadable = [i for i, e in enumerate(session.report["images"]) if e.get("error")]
    for i in unreadable:
        assert running.post("api/decision", {"cell": i, "corrected": "monocyte"})[0] == 404
    # nothing was recorded by any of them
    assert session.decisions == {} and not session.state_path.exists()
    assert running.post("api/undo", {})[0] == 409
    # and a valid one is
    state = running.json("POST", "api/decision", {"cell": cell, "corrected": "monocyte"})["state"]
    assert state["decisions"][str(cell)]["corrected"] == "monocyte"


def test_no_cors_and_same_origin_only(running):
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    code, headers, _ = running.request("OPTIONS", f"/{running.token}/api/decision", headers=preflight)
    assert 400 <= code < 500
    assert not any(k.startswith("access-control-") for k in headers)
    code, headers, _ = running.get("api/session", headers={"Origin": "http://evil.example"})
    assert not any(k.startswith("access-control-") for k in headers)
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
    # the page's own origin may post
    code, _, _ = running.post("api/decision", {"cell": running.session.cells[0], "corrected": "monocyte"},
                              headers={"Origin": f"http://127.0.0.1:{running.port}", "Sec-Fetch-Site": "same-origin"})
    assert code == 200


def test_a_loopback_server_answers_only_to_its_own_host_names(running):
    for host in ("evil.example", f"evil.example:{running.port}", f"127.0.0.1.evil.example:{running.port}",
                 f"192.168.1.20:{running.port}", f"127.0.0.1:{running.port + 1}"):
        code, _, body = running.request("GET", f"/{running.token}/api/session", host=host)
        assert code == 421 and b"cells" not in body, host
    for host in (f"127.0.0.1:{running.port}", f"localhost:{running.port}", f"LOCALHOST:{running.port}"):
        assert running.request("GET", f"/{running.token}/api/session", host=host)[0] == 200


def test_binds_127_0_0_1_by_default(running):
    from wbc_edge.cli import build_parser

    args = build_parser().parse_args(["review", "r.json"])
    assert args.host == "127.0.0.1" and args.port == 8765 and not args.no_browser and args.out is None
    assert running.server.socket.getsockname()[0] == "127.0.0.1"
    assert running.url.startswith(f"http://127.0.0.1:{running.port}/{running.token}/")


def _cli(args, env=None):
    return subprocess.Popen([*WBC_EDGE, "review", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _wait_for_url(proc, timeout=60):
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("open http://"):
            return line.split()[1], lines
    proc.kill()
    raise AssertionError("no URL printed: " + "".join(lines) + proc.stderr.read())


def test_cli_prints_the_url_serves_it_and_stops_on_ctrl_c(report_path):
    import urllib.request

    proc = _cli([str(report_path), "--no-browser", "--port", "0", "--reviewer", "A. Smith"])
    try:
        url, lines = _wait_for_url(proc)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        with urllib.request.urlopen(url + "api/session", timeout=30) as response:
            session = json.load(response)
        assert session["state"]["reviewer"] == "A. Smith" and len(session["cells"]) == 16
        assert any("flagged" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped:" in out and "warning" not in err


def test_cli_warns_when_listening_beyond_this_machine(report_path):
    proc = _cli([str(report_path), "--no-browser", "--port", "0", "--host", "0.0.0.0"])
    try:
        _url, _ = _wait_for_url(proc)
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert "warning: listening on 0.0.0.0" in err


def test_cli_without_the_review_extra_names_the_install(report_path, tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('starlette', 'uvicorn'):\n"
        "            raise ImportError('No module named ' + repr(name))\n"
        "sys.meta_path.insert(0, Block())\n")
    done = subprocess.run([*WBC_EDGE, "review", str(report_path), "--no-browser"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 2
    assert 'pip install "wbc-edge[review]"' in done.stderr


def test_cli_refuses_a_busy_port_clearly(running, report_path, tmp_path):
    done = subprocess.run([*WBC_EDGE, "review", str(report_path), "--no-browser", "--port", str(running.port),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--port 0" in done.stderr


def test_help_has_examples_and_defaults():
    done = subprocess.run([*WBC_EDGE, "review", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for text in ("examples:", "wbc-edge review run1.json", "127.0.0.1", "8765", "--no-browser", "--reviewer",
                 "corrections.csv"):
        assert text in done.stdout, text
    top = subprocess.run([*WBC_EDGE, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "review" in top


def test_cam_endpoint_with_a_model_that_gives_maps(report_path):
    from wbc_edge.review_page.cam import CamProvider

    session_classes = json.loads(report_path.read_text())["model"]["classes"]
    fake = FakeCamClassifier(session_classes)
    cam = CamProvider(json.loads(report_path.read_text())["model"], session_classes, loader=lambda path: fake)
    server = start(report_path, cam=cam)
    try:
        cell = server.session.cells[0]
        label = server.session.current_label(cell)
        data = server.json("GET", f"api/cam/{cell}")
        assert data["available"] and data["class"] == label and data["box"] == [0.0, 0.0, 1.0, 1.0]
        assert len(data["map"]) == 4 and all(len(row) == 4 for row in data["map"])
        flat = [v for row in data["map"] for v in row]
        assert min(flat) == 0.0 and max(flat) == 1.0 and flat == sorted(flat)  # the gradient, normalized
        # another class's map on request; a reclassified cell's map follows its new class
        other = next(c for c in session_classes if c != label)
        assert server.json("GET", f"api/cam/{cell}?class={other}")["class"] == other
        server.json("POST", "api/decision", {"cell": cell, "corrected": other})
        assert server.json("GET", f"api/cam/{cell}")["class"] == other
        assert server.get(f"api/cam/{cell}?class=nope")[0] == 422
        assert server.get("api/cam/99999")[0] == 404
        calls = fake.calls
        server.json("GET", f"api/cam/{cell}")
        assert fake.calls == calls  # cached
    finally:
        server.stop()
    assert fake.closed


@pytest.mark.parametrize("kind", ["none", "no-keyword"])
def test_cam_endpoint_says_when_the_model_has_no_maps(report_path, kind):
    from wbc_edge.review_page.cam import CamProvider

    model = json.loads(report_path.read_text())["model"]
    fake = FakeCamClassifier(model["classes"], cam=None, accepts_keyword=kind != "no-keyword")
    server = start(report_path, cam=CamProvider(model, model["classes"], loader=lambda path: fake))
    try:
        data = server.json("GET", f"api/cam/{server.session.cells[0]}")
        assert data["available"] is False and "CAM not available for this model" in data["reason"]
    finally:
        server.stop()


def test_cam_with_the_reports_own_model(running):
    """The report's model (the shipped one) is loaded for real: maps where it
    has them, else the clear message, never a server error."""
    data = running.json("GET", f"api/cam/{running.session.cells[0]}")
    if data["available"]:
        assert len(data["map"]) >= 1 and max(v for row in data["map"] for v in row) == 1.0
    else:
        assert "CAM not available for this model" in data["reason"]


def test_cam_with_a_model_exported_with_maps(shipped_fp32_checkpoint, classified, tmp_path):
    """End to end with the real interface: a model exported with its class
    activation maps classifies the cells, and the page's map is that
    model's map of the cell's class."""
    import inspect

    import numpy as np

    from wbc_edge import Classifier
    from wbc_edge.export.onnx_export import export_checkpoint

    if "cam" not in inspect.signature(export_checkpoint).parameters:
        pytest.skip("this checkout's export does not make class activation maps yet")
    cells, _ = classified
    model = tmp_path / "cam.onnx"
    export_checkpoint(shipped_fp32_checkpoint, model, verify_images=cells)
    report_file = tmp_path / "cam-report.json"
    done = subprocess.run([*WBC_EDGE, "classify", str(cells), "--model", str(model), "--out", str(report_file)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    server = start(report_file)
    try:
        cell = server.session.cells[0]
        label = server.session.current_label(cell)
        data = server.json("GET", f"api/cam/{cell}")
        assert data["available"], data
        with Classifier.load(model) as clf:
            expected = clf.predict_batch([str(server.session.image_path(cell))], cam=True)[0].cam
        m = expected[server.session.classes.index(label)].astype(np.float64)
        np.testing.assert_allclose(data["map"], (m - m.min()) / (m.max() - m.min()), atol=1e-3)
        assert data["label"] == label
    finally:
        server.stop()
