"""API conformance without a GPU: every TensorRT runtime class, method and
enum the backend uses, and every cuda-python runtime function the CUDA code
calls, exist in NVIDIA's real Python bindings, and are called the way those
bindings document: argument counts and keywords, methods called and
properties read or set, and as many values unpacked as the call returns.

The names are read from the backend's source (tests/tensorrt_api_usage.py),
and checked against ``tensorrt_lean`` (the lean runtime's bindings import
without a GPU: ``pip install tensorrt-lean-cu13``, about 105 MB) and
``cuda.bindings.runtime`` (``pip install cuda-bindings``, about 30 MB).
"""

from __future__ import annotations

import importlib
import inspect

import pytest

from tests.tensorrt_api_usage import (
    BUILD_FILES,
    BUILD_RECEIVERS,
    CUDA_FILES,
    CUDA_STRUCT_RECEIVERS,
    RUNTIME_FILES,
    RUNTIME_RECEIVERS,
    Call,
    cuda_runtime_calls,
    cuda_runtime_usage,
    cuda_struct_reads,
    cython_signature,
    documented_returns,
    pybind_signatures,
    resolve,
    tensorrt_usage,
)
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
def cuda_runtime():
    return _import_or_skip("cuda.bindings.runtime", "pip install cuda-bindings")


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
    assert used >= TENSORRT_10_FALLBACKS, "a declared TensorRT 10 fallback is no longer used: drop it"
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


def test_cuda_runtime_functions_exist_in_cuda_python(cuda_runtime):
    used = cuda_runtime_usage(CUDA_FILES)
    assert ("cudaMemcpyAsync",) in used and ("cudaMallocHost",) in used and ("cudaStreamBeginCapture",) in used
    missing = [".".join(path) for path in used if not resolve(cuda_runtime, path)]
    assert not missing, f"cuda.bindings.runtime lacks {missing}"


def _where(calls) -> str:
    return ", ".join(call.where for call in calls)


def test_runtime_calls_fit_the_documented_signatures(lean, runtime_usage):
    """Each call's arguments fit one of the binding's overloads (pybind11
    writes them into the docstring): a wrong count would only fail on a GPU."""
    wrong = []
    for (cls, name), calls in sorted(runtime_usage.calls.items()):
        owner = getattr(lean, cls)
        if not hasattr(owner, name):
            continue  # a TensorRT 10 fallback: its absence is checked above
        if isinstance(inspect.getattr_static(owner, name), property):
            wrong.append(f"{cls}.{name} is a property but is called at {_where(calls)}")
            continue
        signatures = pybind_signatures(getattr(owner, name), name)
        assert signatures, f"no signature found in the docstring of {cls}.{name}"
        wrong += [f"{cls}.{name} called with {call.args} argument(s) {sorted(call.keywords)} at {call.where}; "
                  f"it takes {[s.names for s in signatures]}" for call in calls
                  if not any(signature.accepts(call) for signature in signatures)]
    assert not wrong, "\n".join(wrong)
    # The check can fail: one argument too many or too few is refused.
    signatures = pybind_signatures(lean.IExecutionContext.set_tensor_address, "set_tensor_address")
    assert [s.names for s in signatures] == [("name", "memory")]
    assert not any(s.accepts(Call(n, frozenset(), "here")) for s in signatures for n in (1, 3))


def test_runtime_attributes_are_properties_that_can_be_set(lean, runtime_usage):
    wrong = []
    for cls, name in sorted(runtime_usage.reads | runtime_usage.stores):
        owner = getattr(lean, cls)
        if not hasattr(owner, name):
            continue  # a TensorRT 10 fallback
        attribute = inspect.getattr_static(owner, name)
        if not isinstance(attribute, property):
            wrong.append(f"{cls}.{name} is used as an attribute but is a {type(attribute).__name__}")
        elif (cls, name) in runtime_usage.stores and attribute.fset is None:
            wrong.append(f"{cls}.{name} is assigned but is read-only")
    assert not wrong, "\n".join(wrong)
    assert ("Runtime", "engine_host_code_allowed") in runtime_usage.stores
    assert ("ICudaEngine", "num_io_tensors") in runtime_usage.reads


def test_cuda_runtime_calls_fit_signatures_and_return_counts(cuda_runtime):
    """Argument counts, and the values unpacked from each call (the
    cudaError_t first), against cuda-python's embedded signatures and the
    Returns section of each function's documentation."""
    calls = cuda_runtime_calls(CUDA_FILES)
    # The reader sees both ways the code unpacks results, or the check would be empty.
    assert all(c.takes is not None for name in ("cudaMemGetInfo", "cudaStreamEndCapture", "cudaMalloc")
               for c in calls[name])
    wrong = []
    for name, uses in sorted(calls.items()):
        function = getattr(cuda_runtime, name)
        signature, returns = cython_signature(function), documented_returns(function)
        for call in uses:
            if not signature.accepts(call):
                wrong.append(f"{name} called with {call.args} argument(s) at {call.where}; it takes {signature.names}")
            if call.takes is not None and call.takes != returns:
                wrong.append(f"{name} returns {returns} value(s), {call.where} unpacks {call.takes}")
    assert not wrong, "\n".join(wrong)
    assert documented_returns(cuda_runtime.cudaMemcpyAsync) == 1  # each function's own count, not a constant


def test_cuda_struct_fields_exist(cuda_runtime):
    fields = cuda_struct_reads(CUDA_FILES, CUDA_STRUCT_RECEIVERS)
    assert ("cudaDeviceProp", "totalGlobalMem") in fields
    missing = [f"{cls}.{name}" for cls, name in sorted(fields) if not hasattr(getattr(cuda_runtime, cls), name)]
    assert not missing, f"cuda.bindings.runtime lacks {missing}"
