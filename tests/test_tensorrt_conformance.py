"""API conformance without a GPU: every TensorRT runtime class, method and
enum the backend uses, and every cuda-python runtime function the CUDA code
calls, exist in NVIDIA's real Python bindings.

The names are read from the backend's source (tests/tensorrt_api_usage.py),
and checked against ``tensorrt_lean`` (the lean runtime's bindings import
without a GPU: ``pip install tensorrt-lean-cu13``, about 105 MB) and
``cuda.bindings.runtime`` (``pip install cuda-bindings``, about 30 MB).
"""

from __future__ import annotations

import importlib

import pytest

from tests.tensorrt_api_usage import (BUILD_FILES, BUILD_RECEIVERS, CUDA_FILES, RUNTIME_FILES, RUNTIME_RECEIVERS,
                                      cuda_runtime_usage, resolve, tensorrt_usage)
from wbc_edge.backends.tensorrt import TENSORRT_10_FALLBACKS
from wbc_edge.backends.tensorrt_compat import HARDWARE_LEVELS


def _import_or_skip(name: str, install: str):
    try:
        return importlib.import_module(name)
    except (ImportError, OSError) as error:
        pytest.skip(f"{name} is not installed ({error}); {install}")


@pytest.fixture(scope="module")
def lean():
    return _import_or_skip("tensorrt_lean", "pip install tensorrt-lean-cu13")


@pytest.fixture(scope="module")
def lean_major(lean):
    return int(lean.__version__.split(".")[0])


@pytest.fixture(scope="module")
def runtime_usage():
    usage = tensorrt_usage(RUNTIME_FILES, RUNTIME_RECEIVERS)
    # The reader must see the calls that matter, or an empty set would pass vacuously.
    for member in [("IExecutionContext", "execute_async_v3"), ("IExecutionContext", "set_input_shape"),
                   ("IExecutionContext", "set_tensor_address"), ("Runtime", "deserialize_cuda_engine"),
                   ("ICudaEngine", "get_tensor_profile_shape"), ("ICudaEngine", "create_execution_context")]:
        assert member in usage.members, f"the source reader no longer sees {member}"
    return usage


def test_runtime_classes_and_enums_exist_in_lean_bindings(lean, runtime_usage):
    missing = [".".join(path) for path in runtime_usage.module_paths if not resolve(lean, path)]
    assert not missing, f"tensorrt_lean {lean.__version__} lacks {missing}"


def test_runtime_methods_exist_in_lean_bindings(lean, lean_major, runtime_usage):
    missing = sorted(f"{cls}.{name}" for cls, name in runtime_usage.members
                     if not resolve(lean, (cls, name)) and f"{cls}.{name}" not in TENSORRT_10_FALLBACKS)
    assert not missing, f"tensorrt_lean {lean.__version__} lacks {missing}"


def test_tensorrt_10_fallbacks_are_used_and_gone_from_11(lean, lean_major, runtime_usage):
    used = {f"{cls}.{name}" for cls, name in runtime_usage.members}
    assert TENSORRT_10_FALLBACKS <= used, "a declared TensorRT 10 fallback is no longer used: drop it"
    if lean_major >= 11:
        still_there = [name for name in TENSORRT_10_FALLBACKS if resolve(lean, tuple(name.split(".")))]
        assert not still_there, f"{still_there} still exist in TensorRT {lean.__version__}: not fallbacks"


def test_logger_overrides_the_real_callbacks(lean, runtime_usage):
    # A misspelt override would never be called by TensorRT.
    assert ("ILogger", "log") in runtime_usage.overrides
    assert hasattr(lean.ILogger, "log")


def test_builder_enums_and_progress_callbacks_exist(lean):
    """The builder itself is not in the lean bindings, but its enums and the
    progress-monitor interface are: those are checked for real."""
    usage = tensorrt_usage(BUILD_FILES, BUILD_RECEIVERS)
    shared = [path for path in usage.module_paths if hasattr(lean, path[0])]
    assert ("BuilderFlag", "VERSION_COMPATIBLE") in shared and ("MemoryPoolType", "WORKSPACE") in shared
    missing = [".".join(path) for path in shared if not resolve(lean, path)]
    assert not missing, f"tensorrt_lean {lean.__version__} lacks {missing}"
    overrides = {name for cls, name in usage.overrides if cls == "IProgressMonitor"}
    assert overrides == {"phase_start", "step_complete", "phase_finish"}
    assert all(hasattr(lean.IProgressMonitor, name) for name in overrides)
    # --hardware-compatible choices name real HardwareCompatibilityLevel members.
    assert all(hasattr(lean.HardwareCompatibilityLevel, level) for level in HARDWARE_LEVELS.values())


# APIs TensorRT 11 removed (TENSORRT.md): the code must not need any of them.
REMOVED_IN_11 = {
    "FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "int8_calibrator",
    "IInt8Calibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "platform_has_fast_fp16",
    "platform_has_fast_int8", "platform_has_tf32", "create_execution_context_without_device_memory",
    "execute_async_v2", "set_binding_shape", "get_binding_index",
}


def test_no_api_that_tensorrt_11_removed(lean, lean_major):
    used = set()
    for files, receivers in ((RUNTIME_FILES, RUNTIME_RECEIVERS), (BUILD_FILES, BUILD_RECEIVERS)):
        usage = tensorrt_usage(files, receivers)
        used |= {name for path in usage.module_paths for name in path}
        used |= {name for _, name in usage.members | usage.optional}
    assert not used & REMOVED_IN_11, f"uses APIs removed in TensorRT 11: {sorted(used & REMOVED_IN_11)}"
    if lean_major >= 11:  # the list is real: these are indeed gone from the installed 11.x bindings
        assert not hasattr(lean.BuilderFlag, "FP16") and not hasattr(lean.BuilderFlag, "INT8")
        assert not hasattr(lean.ICudaEngine, "create_execution_context_without_device_memory")


def test_cuda_runtime_functions_exist_in_cuda_python():
    runtime = _import_or_skip("cuda.bindings.runtime", "pip install cuda-bindings")
    used = cuda_runtime_usage(CUDA_FILES)
    assert ("cudaMemcpyAsync",) in used and ("cudaMallocHost",) in used and ("cudaStreamBeginCapture",) in used
    missing = [".".join(path) for path in used if not resolve(runtime, path)]
    assert not missing, f"cuda.bindings.runtime lacks {missing}"
