"""What 'wbc-edge build-engine' and the TensorRT backend say where TensorRT
or a GPU is missing (every CI machine here), and how they refuse bad input
before touching TensorRT."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from wbc_edge.backends import load_runner
from wbc_edge.backends.tensorrt import TensorRTRunner
from wbc_edge.backends.tensorrt_compat import EngineRecord
from wbc_edge.cli import main
from wbc_edge.errors import MissingDependencyError, WbcEdgeError
from wbc_edge.export.build_engine import engine_metadata, onnx_metadata

ONNX = Path(__file__).resolve().parents[2] / "wbc_edge" / "models" / "default.fp32.onnx"
needs_onnx = pytest.mark.skipif(not ONNX.is_file(), reason="the shipped default.fp32.onnx is not in this install")


def _gpu_here() -> bool:
    try:
        from wbc_edge.backends import cuda

        return cuda.device_count() > 0
    except Exception:
        return False


@pytest.fixture()
def no_tensorrt(monkeypatch):
    """Makes ``import tensorrt`` / ``import tensorrt_lean`` fail as on a machine without them."""
    for name in ("tensorrt", "tensorrt_lean"):
        monkeypatch.setitem(sys.modules, name, None)


def build(capsys, *args):
    code = main(["build-engine", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@needs_onnx
def test_build_engine_without_tensorrt_exits_2_saying_how_to_install(capsys, tmp_path, no_tensorrt):
    code, out, err = build(capsys, "--onnx", ONNX, "--out", tmp_path / "cells.engine", "--quiet")
    assert code == 2 and out == ""
    assert "TensorRT" in err and "pip install 'wbc-edge[tensorrt]'" in err and "NVIDIA GPU" in err
    assert not (tmp_path / "cells.engine").exists() and not (tmp_path / "cells.json").exists()


@needs_onnx
@pytest.mark.skipif(importlib.util.find_spec("cuda.bindings") is None, reason="cuda-bindings is not installed")
@pytest.mark.skipif(_gpu_here(), reason="this machine has a GPU")
def test_build_engine_without_gpu_names_the_cuda_error(capsys, tmp_path, no_tensorrt):
    code, _, err = build(capsys, "--onnx", ONNX, "--out", tmp_path / "cells.engine")
    # no driver at all is said so; a driver without a usable GPU is named by its CUDA error
    assert code == 2 and re.search(r"NVIDIA GPU (and its driver \(no driver is installed|with its driver \(CUDA "
                                   r"says cudaError)", err), err


@needs_onnx
@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/a.engine", "--min-batch", "8", "--opt-batch", "4"], "1 <= min <= opt <= max"),
    (["--out", "{tmp}/a.engine", "--max-batch", "0"], "1 <= min <= opt <= max"),
    (["--out", "{tmp}/a.onnx"], "must end in .engine or .plan"),
    (["--out", "{tmp}/a.engine", "--exclude-lean-runtime"], "only with --version-compatible"),
    (["--out", "{tmp}/a.engine", "--workspace-mb", "0"], "at least 1 MiB"),
])
def test_bad_arguments_refused_before_tensorrt(capsys, tmp_path, args, message):
    code, _, err = build(capsys, "--onnx", ONNX, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2 and message in err


def test_missing_onnx_and_metadata_collision(capsys, tmp_path):
    code, _, err = build(capsys, "--onnx", tmp_path / "none.onnx", "--out", tmp_path / "a.engine")
    assert code == 2 and "ONNX model not found" in err
    model = tmp_path / "cells.onnx"
    model.write_bytes(b"x")
    # cells.onnx -> cells.json and cells.engine -> cells.json: the engine's JSON would overwrite the model's.
    code, _, err = build(capsys, "--onnx", model, "--out", tmp_path / "cells.engine")
    assert code == 2 and "the ONNX model's own metadata" in err and "cells.trt.engine" in err


def test_hardware_compatible_choices(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["build-engine", "--onnx", "m.onnx", "--out", "m.engine", "--hardware-compatible", "turing+"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.fixture()
def engine_file(tmp_path):
    """An engine file and its JSON as build-engine writes them (the plan bytes
    are not a real engine: loading must fail before it matters)."""
    if not ONNX.is_file():
        pytest.skip("the shipped default.fp32.onnx is not in this install")

    def write(version_compatible: bool) -> Path:
        engine = tmp_path / "cells.engine"
        engine.write_bytes(b"plan")
        record = EngineRecord(version="11.4.0.106", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                              min_batch=1, opt_batch=64, max_batch=256, version_compatible=version_compatible,
                              engine_sha256=hashlib.sha256(b"plan").hexdigest())
        engine_metadata(onnx_metadata(ONNX), ONNX, record).save(engine.with_suffix(".json"))
        return engine

    return write


def test_backend_without_tensorrt_says_how_to_install(engine_file, no_tensorrt):
    engine = engine_file(version_compatible=False)
    with pytest.raises(MissingDependencyError, match=r"lean runtime cannot run it.*pip install 'wbc-edge\[tensorrt\]'"):
        TensorRTRunner(engine)
    with pytest.raises(MissingDependencyError, match="pip install"):
        load_runner(engine)
    engine = engine_file(version_compatible=True)
    with pytest.raises(MissingDependencyError, match=r"tensorrt_lean.*wbc-edge\[tensorrt-lean\]"):
        TensorRTRunner(engine)
    with pytest.raises(MissingDependencyError, match=r"wbc-edge\[tensorrt-lean\]"):
        TensorRTRunner(engine, runtime="lean")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_lean") is None, reason="tensorrt_lean is not installed")
@pytest.mark.skipif(importlib.util.find_spec("cuda.bindings") is None, reason="cuda-bindings is not installed")
@pytest.mark.skipif(_gpu_here(), reason="this machine has a GPU")
def test_lean_runtime_without_gpu_names_the_cuda_error(engine_file):
    """The real lean bindings and cuda-python load; the missing GPU is what stops it."""
    with pytest.raises(WbcEdgeError, match=r"cuda\w+\(?\d*\)? failed: cudaError.*no usable NVIDIA GPU.*nvidia-smi"):
        TensorRTRunner(engine_file(version_compatible=True), runtime="lean")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_lean") is None, reason="tensorrt_lean is not installed")
@pytest.mark.skipif(_gpu_here(), reason="this machine has a GPU")
def test_tensorrt_that_cannot_reach_cuda_is_refused_and_kept():
    """The real lean runtime without a CUDA driver: ``Runtime(logger)`` returns
    an object and only logs the CUDA failure; using or freeing that object kills
    the process. start_tensorrt must raise, twice over, and the process live on.
    (Run in a child: the kept object still crashes the interpreter's exit.)"""
    import subprocess

    code = """
import os, tensorrt_lean as trt
from wbc_edge.backends.tensorrt import shared_logger, start_tensorrt
for _ in range(2):
    try:
        start_tensorrt(trt.Runtime, trt, "runtime")
    except Exception as error:
        print(type(error).__name__, "|", error, "|", shared_logger(trt).mark(), flush=True)
print("alive", flush=True)
os._exit(0)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and lines[-1] == "alive", (result.returncode, result.stdout, result.stderr[-2000:])
    first, second = (line.split(" | ") for line in lines[:2])
    for kind, message, _ in (first, second):
        assert kind == "WbcEdgeError" and message.startswith("TensorRT could not start its runtime: ")
        assert "CUDA" in message and message.endswith("check the GPU and its driver with nvidia-smi")
    # The second refusal reports its own errors, not the first one's again.
    assert int(second[2]) > int(first[2]) and second[1].count("Error Code") == first[1].count("Error Code")


def test_backend_refuses_bad_options_and_files(engine_file, tmp_path):
    with pytest.raises(WbcEdgeError, match="engine not found"):
        TensorRTRunner(tmp_path / "none.engine")
    engine = engine_file(version_compatible=True)
    with pytest.raises(WbcEdgeError, match="runtime must be one of"):
        TensorRTRunner(engine, runtime="dispatch")
    with pytest.raises(WbcEdgeError, match=r"outside the engine's profile 1\.\.256"):
        TensorRTRunner(engine, cuda_graphs=[512])
    with pytest.raises(WbcEdgeError, match="device must be"):
        TensorRTRunner(engine, device="gpu0")


def test_importing_the_tensorrt_code_imports_neither_tensorrt_nor_cuda():
    import subprocess

    code = ("import sys, wbc_edge, wbc_edge.backends.tensorrt, wbc_edge.backends.cuda_pipeline, "
            "wbc_edge.export.build_engine, wbc_edge.cli.build_engine; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'tensorrt_lean', 'cuda', 'torch')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
