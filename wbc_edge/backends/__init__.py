"""Backends: one module per inference library, each imported only when used.

``load_runner(path, backend="auto")`` picks by the artifact: a TensorRT engine
runs on TensorRT, an ONNX model on ONNX Runtime, a checkpoint on PyTorch.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, WbcEdgeError
from ..installed import has
from .base import Runner
from .streams import streams_for

BACKENDS = ("tensorrt", "onnxruntime", "openvino", "torch")

# backend -> (module in wbc_edge.backends, runner class, the library it needs, install hint)
_REGISTRY = {
    "tensorrt": ("tensorrt", "TensorRTRunner", "tensorrt", "pip install 'wbc-edge[tensorrt]' (and an NVIDIA GPU and driver)"),
    "onnxruntime": ("onnxruntime", "OnnxRuntimeRunner", "onnxruntime", "pip install onnxruntime"),
    "torch": ("torch", "TorchRunner", "torch", "pip install 'wbc-edge[torch]'"),
    "openvino": ("openvino", "OpenVinoRunner", "openvino", "pip install 'wbc-edge[openvino]'"),
    # a model on a Triton Inference Server: grpc://host:8001/name, http://host:8000/name
    "triton": ("triton", "TritonRunner", "tritonclient", "pip install 'wbc-edge[triton]'"),
}

# artifact suffix -> backend that runs it
_BY_SUFFIX = {".engine": "tensorrt", ".plan": "tensorrt", ".onnx": "onnxruntime", ".pt": "torch", ".pth": "torch"}


def backend_for(path: str | os.PathLike) -> str:
    """The backend that runs an artifact, from its file name (or URL: Triton)."""
    if is_model_url(path):
        return "triton"
    suffix = Path(path).suffix.lower()
    if suffix not in _BY_SUFFIX:
        raise WbcEdgeError(f"{path}: unknown model type '{suffix}'; expected one of {sorted(_BY_SUFFIX)}")
    return _BY_SUFFIX[suffix]


def is_model_url(model) -> bool:
    """Whether ``model`` names a model on a Triton server (``grpc://``, ``http://``, ``https://``)."""
    return isinstance(model, str) and "://" in model and model.split("://", 1)[0].lower() in ("grpc", "http", "https")


def load_runner(path: str | os.PathLike, backend: str = "auto", **options) -> Runner:
    """A runner for the artifact at ``path``. ``options`` go to the runner
    (for example ``providers=`` for onnxruntime, ``device=`` for torch)."""
    if backend == "auto":
        backend = backend_for(path)
    if backend not in _REGISTRY:
        raise WbcEdgeError(f"unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'")
    expected = backend_for(path)
    # an FP32 ONNX from 'wbc-edge export' also runs on torch (rebuilt from its initializers)
    if expected != backend and backend == "triton":
        raise WbcEdgeError(f"{path}: the triton backend runs models named by URL (grpc://host:8001/name) only")
    if expected != backend and expected == "triton":
        raise WbcEdgeError(f"{path}: a model on a Triton server runs on the triton backend (--backend auto), "
                           f"not {backend}")
    # an ONNX model also runs on openvino
    if expected != backend and not (backend in ("torch", "openvino") and expected == "onnxruntime"):
        raise WbcEdgeError(f"{path}: a {Path(path).suffix} file runs on the {expected} backend, not {backend}")
    module_name, class_name, library, install = _REGISTRY[backend]
    if not library_available(backend):
        raise MissingDependencyError(f"the {backend} backend needs '{library}', which", install)
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)(path, **options)


def library_available(backend: str) -> bool:
    """Whether the backend's library is installed (not whether it can run here)."""
    library = _REGISTRY[backend][2]
    # The TensorRT backend also runs on the lean runtime alone (version-compatible engines).
    alternatives = (library, "tensorrt_lean") if backend == "tensorrt" else (library,)
    return any(has(name) for name in alternatives)


def install_hint(backend: str) -> str:
    """The command that installs a backend's library."""
    return _REGISTRY[backend][3]


def options_for(backend: str, precision: str | None, device: str | None,
                num_threads: int | None, streams: int | None = None) -> dict[str, Any]:
    """Keyword arguments for a backend's runner from ``Classifier.load``'s
    choices (precision, device, threads, CPU streams: None for
    :func:`~wbc_edge.backends.streams.default_streams`), or WbcEdgeError for
    a combination the backend cannot run."""
    on_cpu = device is None or device.partition(":")[0] == "cpu"
    if streams is not None and not (backend == "openvino" or (backend == "onnxruntime" and on_cpu)):
        raise WbcEdgeError(f"streams={streams!r}: streams are for the CPU engines (onnxruntime on the CPU, "
                           f"openvino); the {backend} backend{' on ' + device if device else ''} overlaps "
                           "batches its own way")
    cpu_streams = streams_for(streams, num_threads)
    if backend == "onnxruntime":
        options: dict[str, Any] = {"num_threads": num_threads}
        if device is not None:
            kind, _, index = device.partition(":")
            if kind == "cpu":
                options["providers"] = ["CPUExecutionProvider"]
            elif kind == "cuda" and index in ("", "0"):
                options["providers"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            else:
                raise WbcEdgeError(f"device {device!r}: the onnxruntime backend runs on 'cpu' or 'cuda' (GPU 0)")
        if on_cpu:
            options["streams"] = cpu_streams
        return options
    if backend == "torch":
        if precision == "int8":
            raise WbcEdgeError("the torch backend runs fp32 or fp16; INT8 runs on onnxruntime (the int8-cpu model) "
                               "or TensorRT (an engine built from the int8-tensorrt model)")
        options = {"device": device or "cpu"}
        if precision is not None:
            options["half"] = precision == "fp16"
        return options
    if backend == "openvino":
        if device is not None and device.partition(":")[0] != "cpu":
            raise WbcEdgeError(f"device {device!r}: the openvino backend runs on the CPU ('cpu')")
        return {"num_threads": num_threads, "streams": cpu_streams}
    if backend == "triton":
        if device is not None or precision is not None:
            raise WbcEdgeError("a model on a Triton server runs where and as the server runs it: "
                               "--device and --precision do not apply (export another variant with export-triton)")
        return {}
    return {} if device is None else {"device": device}
