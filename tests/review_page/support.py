"""Shared by the review page's tests: a real classify report of the example
cells, the real server on 127.0.0.1 port 0 in a thread, raw HTTP requests."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

EXAMPLES = REPO / "examples"
WBC_EDGE = [sys.executable, "-c", "import sys; from wbc_edge.cli import main; sys.exit(main())"]



def need(module: str, why: str):
    """Imports ``module``; without it the test is skipped, or fails where CI
    is set (CI installs everything the review page's tests need)."""
    import importlib
    import os

    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"{module} is missing in CI: {why}", pytrace=False)
        pytest.skip(f"{module} is missing: {why}", allow_module_level=True)


need("starlette", 'the review page needs its extra: pip install "wbc-edge[review]"')
need("uvicorn", 'the review page needs its extra: pip install "wbc-edge[review]"')

from wbc_edge.review_page.app import ReviewServer  # noqa: E402
from wbc_edge.review_page.state import ReviewSession  # noqa: E402


def classify(cells: Path, report: Path) -> dict:
    """``wbc-edge classify CELLS --out REPORT`` as a user runs it."""
    done = subprocess.run([*WBC_EDGE, "classify", str(cells), "--out", str(report)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(report.read_text())


@pytest.fixture(scope="session")
def classified(tmp_path_factory) -> tuple[Path, dict]:
    """The example cells copied to a folder, and their report (absolute paths)."""
    root = tmp_path_factory.mktemp("classified")
    cells = root / "cells"
    shutil.copytree(EXAMPLES, cells)
    report = classify(cells, root / "report.json")
    assert any(e["review"] for e in report["images"]), "the examples have flagged cells"
    return cells, report


@pytest.fixture
def report_path(classified, tmp_path) -> Path:
    """A fresh copy of the report in its own folder (the review's outputs go beside it)."""
    _, report = classified
    path = tmp_path / "run1.json"
    path.write_text(json.dumps(report, indent=2))
    return path


class Running:
    def __init__(self, server: ReviewServer):
        self.server, self.session, self.token, self.port = server, server.session, server.token, server.port

    @property
    def url(self) -> str:
        return self.server.url

    def request(self, method: str, path: str, body=None, headers: dict | None = None,
                host: str | None = None) -> tuple[int, dict, bytes]:
        """One request with ``path`` sent exactly as written (no normalising)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            all_headers = {"Host": host or f"127.0.0.1:{self.port}"}
            if isinstance(body, (dict, list)):
                all_headers["Content-Type"] = "application/json"
            all_headers.update(headers or {})
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in all_headers.items():
                conn.putheader(k, v)
            if data is not None:
                conn.putheader("Content-Length", str(len(data)))
            conn.endheaders(data)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def get(self, rest: str, **kw):
        return self.request("GET", f"/{self.token}/{rest}", **kw)

    def post(self, rest: str, body, **kw):
        return self.request("POST", f"/{self.token}/{rest}", body, **kw)

    def json(self, method: str, rest: str, body=None, status: int = 200):
        code, _, data = self.request(method, f"/{self.token}/{rest}", body)
        assert code == status, (code, data)
        return json.loads(data)

    def stop(self) -> None:
        self.server.stop()


def start(report: Path, out: Path | None = None, reviewer: str | None = "Test Reviewer", cam=None) -> Running:
    session = ReviewSession(report, out, reviewer)
    return Running(ReviewServer(session, "127.0.0.1", 0, cam=cam).start())


@pytest.fixture
def running(report_path):
    server = start(report_path)
    yield server
    server.stop()


class FakeCamClassifier:
    """Stands for ``Classifier.load(...)`` with the CAM interface:
    ``predict_batch(images, cam=True)`` gives Predictions whose ``cam`` is
    float32 (classes, 4, 4); ``cam`` here is the map given (or a gradient)."""

    def __init__(self, classes, cam="gradient", accepts_keyword=True, model_path=None):
        self.classes = list(classes)
        self.cam = cam
        self.accepts_keyword = accepts_keyword
        self.model_path = model_path
        self.calls = 0
        self.closed = False

        class Meta:
            resize_policy = "stretch"
            input_size = (128, 128)

        self.metadata = Meta()

    def predict_batch(self, images, **kw):
        from wbc_edge.prediction import Prediction

        if kw and not self.accepts_keyword:
            raise TypeError("predict_batch() got an unexpected keyword argument 'cam'")
        self.calls += 1
        n = len(self.classes)
        if isinstance(self.cam, str):
            maps = np.zeros((n, 4, 4), np.float32)
            for k in range(n):  # class k's evidence peaks at a different corner
                maps[k] = np.arange(16, dtype=np.float32).reshape(4, 4) * (k + 1) - 3
        else:
            maps = self.cam
        pred = Prediction(path=str(images[0]), label=self.classes[0], confidence=0.9)
        if kw.get("cam") and maps is not None:
            object.__setattr__(pred, "cam", maps)
        elif not hasattr(pred, "cam"):
            object.__setattr__(pred, "cam", None)
        return [pred]

    def close(self):
        self.closed = True
