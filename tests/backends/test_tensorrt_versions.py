"""The TensorRT code against every supported TensorRT version, and the build
side's own logic, without TensorRT libraries or a GPU.

- Every TensorRT member the code uses (runtime and builder side) exists in the
  API manifests of 10.0.1, 10.3.0 (JetPack 6), 10.16.1.11 and 11.4.0.106
  (tensorrt_api/manifests, written by tensorrt_api/make_manifest.sh from the
  real bindings), called with arguments one of its signatures takes, and set
  only where it is settable.
- Every Runtime, Builder, OnnxParser and Refitter gets the one shared logger.
- A NULL from TensorRT (pybind11's TypeError) is refused with the project's
  error, through the real 11.4 bindings over stand-in libraries.
- network_precision, the Ctrl-C path of the progress monitor, the CPU-INT8
  refusal, ModelOpt's exclusion patterns and the calibration defaults.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.tensorrt_api_usage import (
    BUILD_FILES,
    BUILD_RECEIVERS,
    REPO,
    RUNTIME_FILES,
    RUNTIME_RECEIVERS,
    Call,
    pybind_signatures,
    tensorrt_usage,
)
from wbc_edge.backends.tensorrt import TENSORRT_10_FALLBACKS, TENSORRT_ALTERNATIVES
from wbc_edge.errors import WbcEdgeError

API = Path(__file__).resolve().parent / "tensorrt_api"
MANIFESTS = sorted((API / "manifests").glob("trt-api-*.json"))
SUPPORTED = {"10.0.1", "10.3.0", "10.16.1.11", "11.4.0.106"}


def _manifest(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_manifest_for_every_supported_version():
    assert {_manifest(path)["version"] for path in MANIFESTS} == SUPPORTED


def _usages():
    return {"runtime": tensorrt_usage(RUNTIME_FILES, RUNTIME_RECEIVERS),
            "builder": tensorrt_usage(BUILD_FILES, BUILD_RECEIVERS)}


def _has(manifest: dict, owner: str, member: str) -> bool:
    return member in manifest["classes"].get(owner, {}) or member in manifest["enums"].get(owner, [])


def _alternative_present(manifest: dict, owner: str, member: str) -> bool:
    name = f"{owner}.{member}"
    pairs = {**TENSORRT_ALTERNATIVES, **{v: k for k, v in TENSORRT_ALTERNATIVES.items()}}
    if name in TENSORRT_10_FALLBACKS and manifest["version"].startswith("11."):
        return True
    other = pairs.get(name)
    return other is not None and _has(manifest, *other.split("."))


@pytest.mark.parametrize("manifest_path", MANIFESTS, ids=lambda p: p.stem)
def test_every_member_the_code_uses_exists(manifest_path):
    manifest = _manifest(manifest_path)
    usages = _usages()
    assert ("IExecutionContext", "set_optimization_profile_async") in usages["runtime"].members
    assert ("IBuilderConfig", "add_optimization_profile") in usages["builder"].members
    missing = []
    for side, usage in usages.items():
        for path in usage.module_paths:
            if path == ("__version__",):
                continue
            known = path[0] in manifest["classes"] or path[0] in manifest["enums"]
            if not known or (len(path) > 1 and not _has(manifest, path[0], path[1])):
                missing.append(f"{side}: trt.{'.'.join(path)}")
        for owner, member in usage.members:
            if not _has(manifest, owner, member) and not _alternative_present(manifest, owner, member):
                missing.append(f"{side}: {owner}.{member}")
    assert missing == [], f"TensorRT {manifest['version']} lacks {sorted(missing)}"


@pytest.mark.parametrize("manifest_path", MANIFESTS, ids=lambda p: p.stem)
def test_every_call_fits_a_signature_and_every_store_a_settable_property(manifest_path):
    manifest = _manifest(manifest_path)
    wrong = []
    for side, usage in _usages().items():
        for (owner, member), calls in sorted(usage.calls.items()):
            entry = manifest["classes"].get(owner, {}).get(member)
            if entry is None:
                continue  # an alternative for another version: checked above
            if entry["kind"] == "property":
                wrong.append(f"{side}: {owner}.{member} is a property but is called")
                continue
            signatures = pybind_signatures(types.SimpleNamespace(__doc__="\n".join(entry["signatures"])), member)
            assert signatures, f"{owner}.{member}: no signature in the manifest"
            wrong += [f"{side}: {owner}.{member}{call.args, sorted(call.keywords)} at {call.where} fits none of "
                      f"{[s.names for s in signatures]}" for call in calls
                      if not any(s.accepts(call) for s in signatures)]
        for owner, member in usage.stores:
            entry = manifest["classes"].get(owner, {}).get(member)
            if entry is not None and not (entry["kind"] == "property" and entry["settable"]):
                wrong.append(f"{side}: {owner}.{member} is assigned but is not a settable property")
    assert wrong == [], f"TensorRT {manifest['version']}:\n" + "\n".join(wrong)


def test_the_signature_check_can_fail():
    manifest = _manifest(MANIFESTS[0])
    entry = manifest["classes"]["IExecutionContext"]["set_input_shape"]
    signatures = pybind_signatures(types.SimpleNamespace(__doc__="\n".join(entry["signatures"])), "set_input_shape")
    assert any(s.accepts(Call(2, frozenset(), "here")) for s in signatures)
    assert not any(s.accepts(Call(n, frozenset(), "here")) for s in signatures for n in (1, 3))


# --- one logger -----------------------------------------------------------------------


FACTORIES = {"Runtime", "Builder", "OnnxParser", "Refitter"}


def test_every_tensorrt_factory_gets_the_shared_logger():
    """Each ``trt.Runtime/Builder/OnnxParser/Refitter(...)`` in the package
    passes, as its logger, a name bound to ``shared_logger(trt)`` (or is handed
    to start_tensorrt, which calls it with that logger)."""
    found, wrong = [], []
    for path in sorted((REPO / "wbc_edge").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "trt"
                    and node.func.attr in FACTORIES):
                continue
            found.append(f"{path.name}:{node.lineno}")
            last = node.args[-1] if node.args else None
            if not (isinstance(last, ast.Name) and last.id == "logger"):
                wrong.append(f"{path.name}:{node.lineno}: trt.{node.func.attr} is not given 'logger'")
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                         and n.name not in ("shared_logger", "_make_logger")):
            # wherever a 'logger' is made, it is the shared one (or a lambda's parameter, given by start_tensorrt)
            for node in ast.walk(function):
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "logger"
                                                        for t in node.targets):
                    value = node.value
                    if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                            and value.func.id == "shared_logger"):
                        wrong.append(f"{path.name}:{node.lineno}: 'logger' is not shared_logger(trt)")
    factories = {entry.split(":")[0] for entry in found}
    assert {"build_engine.py"} <= factories, found  # the reader sees the builder side's factories
    text = (REPO / "wbc_edge" / "backends" / "tensorrt.py").read_text()
    assert "start_tensorrt(trt.Runtime, trt" in text
    assert wrong == []


# --- NULL from TensorRT, through the real bindings ------------------------------------------


@pytest.fixture(scope="module")
def real_bindings(tmp_path_factory):
    """The real tensorrt 11.4 bindings importable over stand-in libraries:
    (PYTHONPATH entry, LD_LIBRARY_PATH entry). Needs gcc and the 1.3 MB wheel
    from the package index; skipped, saying which, without them."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the stand-in TensorRT libraries")
    work = tmp_path_factory.mktemp("tensorrt-bindings")
    wheels = os.environ.get("WBC_EDGE_TENSORRT_WHEELS")
    if not wheels:
        wheels = str(work / "wheels")
        result = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", wheels,
                                 "tensorrt-cu13-bindings==11.4.0.106"], capture_output=True, text=True, timeout=300)
        if result.returncode:
            pytest.skip(f"the tensorrt-cu13-bindings wheel could not be downloaded (set WBC_EDGE_TENSORRT_WHEELS "
                        f"to a folder holding it): {result.stderr.strip()[-300:]}")
    wheel = next(iter(sorted(Path(wheels).glob("tensorrt_cu13_bindings-11.4*.whl"))), None)
    if wheel is None:
        pytest.skip(f"no tensorrt_cu13_bindings 11.4 wheel in {wheels}")
    subprocess.run(["bash", str(API / "stubs" / "build_stubs.sh"), "11", str(work / "stubs")], check=True)
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(work / "site")
    return str(work / "site"), str(work / "stubs")


NULL_SCRIPT = """
import sys
import tensorrt_bindings as trt
from tests.backends.fake_cudart import FakeCudart
from wbc_edge.backends import cuda, tensorrt
from wbc_edge.backends.tensorrt import start_tensorrt
from wbc_edge.export import build_engine as build
from wbc_edge.cli import main

for factory, what in ((trt.Runtime, "runtime"), (trt.Builder, "builder")):
    try:
        start_tensorrt(factory, trt, what)
        print("started", what)
    except Exception as error:
        print(type(error).__name__, "|", error)
# the CLI on a GPU (the CUDA stand-in) whose TensorRT returns NULL: a message, exit status 2
cuda._cudart = FakeCudart()
build.import_tensorrt = lambda runtime="full": trt
build.missing_for = lambda purpose: []
print("exit", main(["build-engine", "--onnx", sys.argv[1], "--out", sys.argv[2], "--quiet"]))
"""


def test_a_null_from_tensorrt_is_refused_with_the_project_s_error(real_bindings, tmp_path):
    site, stubs = real_bindings
    onnx = REPO / "wbc_edge" / "models" / "default.fp32.onnx"
    if not onnx.is_file():
        pytest.skip("the shipped default.fp32.onnx is not in this install")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([site, str(REPO)]), "LD_LIBRARY_PATH": stubs}
    result = subprocess.run([sys.executable, "-c", NULL_SCRIPT, str(onnx), str(tmp_path / "cells.engine")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr[-3000:]
    assert lines[0] == "WbcEdgeError | TensorRT could not start its runtime: TensorRT gave no reason (see its log above)"
    assert lines[1].startswith("WbcEdgeError | TensorRT could not start its builder: ")
    assert lines[-1] == "exit 2"
    assert "could not start its builder" in result.stderr and "Traceback" not in result.stderr


# --- the build side's own logic ---------------------------------------------------------------


def _fake_network(trt, layers):
    """layers: (type name, output dtype name) in order."""
    def layer(kind, dtype):
        output = types.SimpleNamespace(dtype=getattr(trt.DataType, dtype))
        return types.SimpleNamespace(type=getattr(trt.LayerType, kind), num_outputs=1, get_output=lambda k: output)

    made = [layer(kind, dtype) for kind, dtype in layers]
    return types.SimpleNamespace(num_layers=len(made), get_layer=made.__getitem__)


@pytest.fixture()
def trt_enums():
    enum = __import__("enum")
    return types.SimpleNamespace(
        LayerType=enum.Enum("LayerType", "CONSTANT CAST CONVOLUTION MATRIX_MULTIPLY DECONVOLUTION QUANTIZE ACTIVATION"),
        DataType=enum.Enum("DataType", "FLOAT HALF INT8 UINT8"))


def test_network_precision_is_decided_by_compute_layers(trt_enums):
    from wbc_edge.export.build_engine import network_precision

    # The shipped FP32 model: weights stored as float16 constants, cast to float32 before the convolutions.
    fp32_with_half_weights = [("CONSTANT", "HALF"), ("CAST", "FLOAT"), ("CONVOLUTION", "FLOAT"),
                              ("ACTIVATION", "FLOAT"), ("MATRIX_MULTIPLY", "FLOAT")]
    assert network_precision(trt_enums, _fake_network(trt_enums, fp32_with_half_weights)) == "fp32"
    fp16 = [("CAST", "HALF"), ("CONSTANT", "HALF"), ("CONVOLUTION", "HALF"), ("CAST", "FLOAT")]
    assert network_precision(trt_enums, _fake_network(trt_enums, fp16)) == "fp16"
    int8 = [("QUANTIZE", "INT8"), ("CONVOLUTION", "FLOAT")]
    assert network_precision(trt_enums, _fake_network(trt_enums, int8)) == "int8"


def test_ctrl_c_during_a_build_cancels_it_and_is_raised_after(trt_enums):
    import io

    from wbc_edge.export import build_progress

    class IProgressMonitor:
        def __init__(self):
            pass

    class Config:
        progress_monitor = None

    trt = types.SimpleNamespace(IProgressMonitor=IProgressMonitor)
    config = Config()
    answers = []
    with pytest.raises(KeyboardInterrupt), build_progress.build_progress(trt, config, io.StringIO()):
        monitor = config.progress_monitor
        monitor.phase_start("Building", None, 3)
        original, monitor._draw = monitor._draw, lambda force=False: (_ for _ in ()).throw(KeyboardInterrupt())
        answers.append(monitor.step_complete("Building", 0))  # Ctrl-C arrives in TensorRT's callback
        monitor._draw = original
        answers.append(monitor.step_complete("Building", 1))  # TensorRT asks again before it stops
    assert answers == [False, False]  # the build was told to stop, and the interrupt came after it


SHIPPED_CPU_INT8 = REPO / "wbc_edge" / "models" / "default.int8-cpu.onnx"


@pytest.mark.skipif(not SHIPPED_CPU_INT8.is_file(), reason="the shipped default.int8-cpu.onnx is not in this install")
def test_a_cpu_int8_model_is_refused_before_any_build(tmp_path, capsys):
    from wbc_edge.cli import main

    code = main(["build-engine", "--onnx", str(SHIPPED_CPU_INT8), "--out", str(tmp_path / "cells.engine")])
    assert code == 2 and "int8-tensorrt" in capsys.readouterr().err
    # the graph alone gives it away, whatever its JSON says
    pytest.importorskip("onnx")
    from wbc_edge.export.build_engine import _has_uint8_quantization

    assert _has_uint8_quantization(SHIPPED_CPU_INT8)
    assert not _has_uint8_quantization(REPO / "wbc_edge" / "models" / "default.fp32.onnx")


def test_modelopt_excludes_exactly_the_named_nodes():
    from wbc_edge.calibration.int8_tensorrt import exclusion_patterns

    patterns = exclusion_patterns(["/conv1/Conv", "fc.MatMul"])
    matched = [name for name in ("/conv1/Conv", "/conv1/Conv_1", "/conv10/Conv", "fc.MatMul", "fcXMatMul")
               if any(re.match(pattern, name) for pattern in patterns)]  # how ModelOpt reads them
    assert matched == ["/conv1/Conv", "fc.MatMul"]


def test_calibration_defaults_are_those_of_the_shipped_models_and_readme():
    from wbc_edge.calibration.calibrate import DEFAULT_METHODS, DEFAULT_NUM_IMAGES_FOR
    from wbc_edge.calibration.dataset import DEFAULT_NUM_IMAGES

    readme = (REPO / "README.md").read_text()
    assert DEFAULT_NUM_IMAGES_FOR["tensorrt"] == DEFAULT_NUM_IMAGES_FOR["cpu"]
    assert f"`--num-images` ({DEFAULT_NUM_IMAGES_FOR['cpu']} for INT8, else {DEFAULT_NUM_IMAGES})" in readme
    assert f"tensorrt: `{DEFAULT_METHODS['tensorrt']}` (default)" in readme
    assert f"cpu: `{DEFAULT_METHODS['cpu']}` (default)" in readme
    for path in (REPO / "wbc_edge" / "models").glob("default.int8-*[!n].json"):  # not *.calibration.json
        quantization = json.loads(path.read_text())["quantization"]
        assert (quantization["method"], quantization["num_images"]) == (
            DEFAULT_METHODS[quantization["target"]],
            DEFAULT_NUM_IMAGES_FOR.get(quantization["target"], DEFAULT_NUM_IMAGES)), path.name


def test_profiles_are_checked_before_tensorrt(tmp_path):
    from wbc_edge.export.build_engine import build_engine

    onnx = REPO / "wbc_edge" / "models" / "default.fp32.onnx"
    with pytest.raises(WbcEdgeError, match="profiles must be 1 to 8"):
        build_engine(onnx, tmp_path / "a.engine", profiles=0, progress=None)
