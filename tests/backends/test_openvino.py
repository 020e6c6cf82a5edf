"""The OpenVINO backend against ONNX Runtime on the same ONNX files and real
cells (the shipped sample and examples), per precision and inference hint:
top-1 agreement >= 99.5%, and every output column (logits, the guard's
ood_score, the class activation maps) within the tolerance stated in
TOLERANCES; and the engine probe that lets ``auto`` choose it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openvino", reason="OpenVINO is needed (pip install 'wbc-edge[openvino]')")

from wbc_edge import Classifier
from wbc_edge.backends import load_runner, probe
from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner
from wbc_edge.backends.openvino import OpenVinoRunner, cpu_capabilities, default_hint
from wbc_edge.errors import WbcEdgeError
from wbc_edge.models import shipped_models
from wbc_edge.preprocess import preprocess_batch

from ..conftest import REPO, needs_exact_int8

AGREEMENT = 0.995
#: (model variant, inference hint) -> the largest |OpenVINO - ONNX Runtime| per
#: output: logits, ood_score, cam (cam values reach about 65 on these cells)
TOLERANCES = {
    ("fp32", "f32"): {"logits": 0.01, "ood_score": 0.001, "cam": 0.02},
    ("fp32", "f16"): {"logits": 0.05, "ood_score": 0.01, "cam": 0.15},
    ("fp32", "bf16"): {"logits": 0.3, "ood_score": 0.04, "cam": 1.0},
    ("int8-cpu", "f32"): {"logits": 0.5, "ood_score": 0.02, "cam": 1.5},
}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own cache folder: no probe or compiled model from the user's."""
    monkeypatch.setenv("WBC_EDGE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def cells(cell_images) -> list[np.ndarray]:
    """The shipped sample cells (conftest's cell_images) and the examples."""
    examples = []
    for path in sorted((REPO / "examples").glob("*.jpg")):
        with Image.open(path) as image:
            examples.append(np.asarray(image.convert("RGB")))
    return [*cell_images, *examples]


@pytest.fixture(scope="module")
def references(cells) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per shipped CPU variant: the preprocessed batch and ONNX Runtime's rows."""
    found = {}
    for variant, model in shipped_models().items():
        if variant == "int8-tensorrt":
            continue
        with OnnxRuntimeRunner(model.path) as runner:
            meta = runner.metadata
            batch = preprocess_batch(cells, meta.input_size, policy=meta.resize_policy)
            found[variant] = (batch, runner.infer(batch))
    if not found:
        pytest.skip("no shipped ONNX model in this checkout")
    return found


def hints() -> list:
    capabilities = cpu_capabilities()
    cases = [("fp32", "f32"), pytest.param("int8-cpu", "f32", marks=needs_exact_int8)]
    cases += [("fp32", h) for h, cap in (("bf16", "BF16"), ("f16", "FP16")) if cap in capabilities]
    return cases


@pytest.mark.parametrize(("variant", "hint"), hints())
def test_parity_with_onnxruntime(references, variant, hint):
    if variant not in references:
        pytest.skip(f"{variant} is not shipped in this checkout")
    batch, expected = references[variant]
    model = shipped_models()[variant].path
    with OpenVinoRunner(model, inference_precision=hint, cache_dir=False) as runner:
        meta = runner.metadata
        got = runner.infer(batch)
    assert got.shape == expected.shape == (len(batch), meta.num_outputs) and got.dtype == np.float32
    tolerance = TOLERANCES[(variant, hint)]
    columns = meta.output_columns
    assert set(columns) == {"logits", "ood_score", "cam"}  # the shipped models have the guard and the maps
    for name, where in columns.items():
        worst = float(np.abs(got[:, where] - expected[:, where]).max())
        assert worst <= tolerance[name], f"{variant} {hint} {name}: {worst} > {tolerance[name]}"
    logits = columns["logits"]
    ours, theirs = got[:, logits].argmax(1), expected[:, logits].argmax(1)
    assert (ours == theirs).mean() >= AGREEMENT
    # a cell labelled differently is one whose top two logits are within the tolerance of each other
    ranked = np.sort(expected[:, logits], axis=1)
    assert (ranked[ours != theirs, -1] - ranked[ours != theirs, -2] <= 2 * tolerance["logits"]).all()
    # the guard says the same, but for cells whose score is within the tolerance of its threshold
    threshold = meta.domain_guard["threshold"]
    score_ov, score_ort = got[:, columns["ood_score"]][:, 0], expected[:, columns["ood_score"]][:, 0]
    differ = (score_ov > threshold) != (score_ort > threshold)
    assert (np.abs(score_ort[differ] - threshold) <= tolerance["ood_score"]).all()


def test_default_hint_follows_the_cpu():
    assert default_hint("fp32", ["FP32", "BF16", "FP16", "INT8"]) == "bf16"
    assert default_hint("fp32", ["FP32", "FP16", "INT8"]) == "f16"
    assert default_hint("fp32", ["FP32", "INT8"]) == "f32"
    assert default_hint("int8", ["FP32", "BF16", "FP16", "INT8"]) == "f32"  # float parts of INT8 stay f32


@needs_exact_int8
def test_classifier_on_openvino_agrees_with_onnxruntime(sample_paths):
    paths = sample_paths[:48]
    with Classifier.load(backend="onnxruntime", precision="int8") as reference, \
            Classifier.load(backend="openvino", precision="int8") as clf:
        assert clf.backend == "openvino" and clf.backend_reason == "openvino: asked for"
        assert clf.precision == reference.precision == "int8"
        assert clf.describe()["runner"]["inference_precision"] == "f32"
        ours, theirs = clf.predict_batch(paths, cam=True), reference.predict_batch(paths, cam=True)
    assert np.mean([a.label == b.label for a, b in zip(ours, theirs)]) >= AGREEMENT
    assert max(abs(a.confidence - b.confidence) for a, b in zip(ours, theirs)) < 0.05
    for a, b in zip(ours, theirs):
        assert a.cam.shape == b.cam.shape and float(np.abs(a.cam - b.cam).max()) <= TOLERANCES[("int8-cpu", "f32")]["cam"]
        assert a.ood_score == pytest.approx(b.ood_score, abs=TOLERANCES[("int8-cpu", "f32")]["ood_score"])


def test_compiled_model_cached_between_loads(tmp_path):
    model = shipped_models()["int8-cpu"].path
    with OpenVinoRunner(model, cache_dir=tmp_path / "ov") as first:
        assert not first.loaded_from_cache
    assert list((tmp_path / "ov").iterdir())
    with OpenVinoRunner(model, cache_dir=tmp_path / "ov") as second:
        assert second.loaded_from_cache and second.describe()["cache_dir"] == str(tmp_path / "ov")
    with OpenVinoRunner(model) as default:  # the per-user cache, here WBC_EDGE_CACHE_DIR
        assert default.cache_dir == probe.cache_root() / "openvino"
    with OpenVinoRunner(model, cache_dir=False) as uncached:
        assert uncached.cache_dir is None and not uncached.loaded_from_cache


def test_refusals_name_the_input(tmp_path):
    with pytest.raises(WbcEdgeError, match="missing.onnx: ONNX model not found"):
        OpenVinoRunner(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(WbcEdgeError, match="garbage.onnx: OpenVINO cannot read it"):
        OpenVinoRunner(garbage)
    with pytest.raises(WbcEdgeError, match="inference_precision 'int4'"):
        OpenVinoRunner(shipped_models()["int8-cpu"].path, inference_precision="int4")
    with pytest.raises(WbcEdgeError, match="runs on the CPU"):
        Classifier.load(backend="openvino", device="cuda")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    with pytest.raises(WbcEdgeError, match="runs on the tensorrt backend, not openvino"):
        load_runner(engine, backend="openvino")


def test_cli_classify_on_openvino(tmp_path, capsys):
    from wbc_edge.cli import main

    out = tmp_path / "r.json"
    assert main(["classify", str(REPO / "examples"), "--backend", "openvino", "--out", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["model"]["backend"] == "openvino" and report["model"]["backend_reason"] == "openvino: asked for"
    assert report["differential"]["total"] == 16 and report["differential"]["errors"] == 0


# --- auto: the engine probe -------------------------------------------------------------

def fake_probe(path, ms: dict[str, float]) -> None:
    probe.save_probe({"key": probe.probe_key(path), "ms_per_image": ms, "backend": probe.winner(ms),
                      "measured_at": "2026-01-01T00:00:00Z"})


def test_winner_needs_openvino_clearly_faster():
    assert probe.winner({"onnxruntime": 1.0, "openvino": 0.5}) == "openvino"
    assert probe.winner({"onnxruntime": 1.0, "openvino": 0.97}) == "onnxruntime"  # within the margin: kept
    assert probe.winner({"onnxruntime": 1.0, "openvino": 1.4}) == "onnxruntime"
    assert probe.winner({"onnxruntime": 1.0}) == "onnxruntime"


@pytest.fixture
def cpu_without_amx(monkeypatch):
    """A CPU like the AMD Zen 5 one measured: AVX-512, no AMX."""
    monkeypatch.setattr(probe, "cpu_flags", lambda: ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"])


@pytest.fixture
def cpu_with_amx(monkeypatch):
    monkeypatch.setattr(probe, "cpu_flags", lambda: ["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"])


def test_auto_without_a_probe_runs_onnxruntime_without_amx_and_says_why(cpu_without_amx):
    with Classifier.load() as clf:
        assert clf.backend == "onnxruntime"
        assert "no engine probe cached" in clf.backend_reason and "wbc-edge info --probe" in clf.backend_reason
        assert clf.describe()["backend_reason"] == clf.backend_reason


def test_auto_without_a_probe_runs_openvino_with_amx_and_says_why(cpu_with_amx):
    with Classifier.load() as clf:
        assert clf.backend == "openvino"
        assert clf.backend_reason.startswith("openvino: this CPU has AMX (amx_int8)")
        assert "wbc-edge info --probe" in clf.backend_reason


def test_a_probe_outranks_the_cpu_flags(cpu_with_amx):
    fake_probe(shipped_models()["int8-cpu"].path, {"onnxruntime": 1.0, "openvino": 1.3})
    with Classifier.load() as clf:
        assert clf.backend == "onnxruntime" and "not measured at least 5% faster" in clf.backend_reason


def test_auto_follows_the_cached_probe(cpu_without_amx):
    model = shipped_models()["int8-cpu"].path
    fake_probe(model, {"onnxruntime": 1.5, "openvino": 0.4})
    with Classifier.load() as clf:
        assert clf.backend == "openvino"
        assert clf.backend_reason.startswith("openvino: measured faster than onnxruntime on this CPU")
        assert "openvino 0.400, onnxruntime 1.500 ms per image" in clf.backend_reason
    with Classifier.load(device="cpu", runner_options={"spinning": True}) as clf:  # options for onnxruntime
        assert clf.backend == "onnxruntime" and "runner options" in clf.backend_reason
    fake_probe(model, {"onnxruntime": 1.0, "openvino": 1.3})
    with Classifier.load() as clf:
        assert clf.backend == "onnxruntime" and "not measured at least 5% faster" in clf.backend_reason


def test_probe_holds_for_its_model_and_thread_count_only(tmp_path, cpu_without_amx):
    model = shipped_models()["int8-cpu"].path
    fake_probe(model, {"onnxruntime": 1.5, "openvino": 0.4})
    assert probe.choose_cpu_engine(model)[0] == "openvino"
    assert probe.choose_cpu_engine(model, num_threads=probe.probe_key(model)["num_threads"] + 1)[0] == "onnxruntime"
    copy = tmp_path / "changed.onnx"
    copy.write_bytes(model.read_bytes() + b"\0")  # another sha256
    copy.with_suffix(".json").write_bytes(model.with_suffix(".json").read_bytes())
    assert probe.choose_cpu_engine(copy)[0] == "onnxruntime"


def test_unreadable_probe_cache_is_an_empty_one(cpu_without_amx):
    probe.probe_file().parent.mkdir(parents=True)
    probe.probe_file().write_text("{not json")
    with Classifier.load() as clf:
        assert clf.backend == "onnxruntime" and "no engine probe cached" in clf.backend_reason


def test_info_probe_measures_caches_and_shows_the_choice(capsys):
    from wbc_edge.cli import main

    model = shipped_models()["int8-cpu"].path
    assert main(["info", "--json", "--probe", "--model", str(model), "--threads", "1"]) == 0
    engine = json.loads(capsys.readouterr().out)["cpu_engine"]
    entry = engine["models"][model.name]
    measured = entry["probe"]["ms_per_image"]
    assert set(measured) == {"onnxruntime", "openvino"} and all(v > 0 for v in measured.values())
    assert entry["backend"] == probe.winner(measured) and engine["num_threads"] == 1
    cached = json.loads(probe.probe_file().read_text())["probes"]
    assert [p["ms_per_image"] for p in cached.values()] == [measured]
    assert probe.choose_cpu_engine(model, num_threads=1)[0] == entry["backend"]
    assert main(["info"]) == 0
    assert "cpu engine (--backend auto" in capsys.readouterr().out
