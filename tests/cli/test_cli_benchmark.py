"""wbc-edge benchmark: every batch size x concurrency measured, percentiles
in order, the stage times, strict JSON; bad options refused with exit 2."""

from __future__ import annotations

import json

from tests.conftest import REPO
from wbc_edge.cli import main

EXAMPLES = REPO / "examples"


def test_benchmark_writes_one_run_per_batch_size_and_concurrency(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["benchmark", str(EXAMPLES), "--batch-size", "1,4", "--concurrency", "1,2", "--count", "6",
                 "--threads", "1", "--out", str(out)])
    assert code == 0
    document = json.loads(out.read_text())
    runs = document["runs"]
    assert [(r["batch_size"], r["concurrency"]) for r in runs] == [(1, 1), (1, 2), (4, 1), (4, 2)]
    for r in runs:
        assert r["requests"] == 6 and r["images_per_s"] > 0
        latency = r["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert set(document["stages_ms_per_image"]) == {"decode", "preprocess", "inference"}
    assert all(v > 0 for v in document["stages_ms_per_image"].values())
    assert document["images"] == len(list(EXAMPLES.glob("*.jpg"))) and document["machine"]["cpu_count"]
    printed = capsys.readouterr().out
    assert printed.count("images/s") == 4 and "ms per image" in printed


def test_benchmark_refuses_bad_options(tmp_path, capsys):
    assert main(["benchmark", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["benchmark", "--count", "0"]) == 2
    try:
        main(["benchmark", "--batch-size", "0,8"])
    except SystemExit as stop:  # argparse's own refusal
        assert stop.code == 2
    assert "positive integers" in capsys.readouterr().err


def test_benchmark_save_caches_the_engine_probe_auto_then_follows(tmp_path, capsys, monkeypatch):
    import pytest

    pytest.importorskip("openvino", reason="--save compares onnxruntime with openvino (pip install 'wbc-edge[openvino]')")
    from wbc_edge.backends import probe
    from wbc_edge.models import shipped_models

    monkeypatch.setenv("WBC_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    model = shipped_models()["fp32"].path
    out = tmp_path / "bench.json"
    assert main(["benchmark", str(EXAMPLES), "--model", str(model), "--batch-size", "4", "--concurrency", "1",
                 "--count", "2", "--threads", "1", "--save", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())["engine_probe"]
    assert saved["key"]["num_threads"] == 1 and saved["key"]["streams"] == 1
    assert "engine probe: onnxruntime" in capsys.readouterr().out
    assert probe.cached_probe(model, 1, 1)["ms_per_image"] == saved["ms_per_image"]
    backend, reason = probe.choose_cpu_engine(model, 1, 1)
    assert backend == probe.winner(saved["ms_per_image"]) and "engine probe of" in reason


def test_benchmark_save_refuses_a_model_no_cpu_engine_runs(tmp_path, capsys):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not used")
    assert main(["benchmark", str(EXAMPLES), "--model", str(checkpoint), "--save"]) == 2
    assert "--save probes the CPU engines, which run ONNX models" in capsys.readouterr().err
