"""OpenVINO backend: the CPU engine that wins on some CPUs (Intel's, with
AMX or AVX-512 in particular).

Runs the same ONNX files as ONNX Runtime (FP32, and the INT8-CPU Q/DQ model,
whose integer parts OpenVINO runs as integer kernels), with the same outputs
(logits, and the guard's ``ood_score`` and the class activation maps where the
model has them). An FP32 model runs with an inference-precision hint where the
CPU has a faster format: bf16 where OpenVINO reports BF16 (AVX-512 BF16,
AMX), else f16 where it reports FP16, else f32; other models (INT8, FP16)
run their float parts in f32. ``inference_precision="f32"`` forces f32. The
tolerances these hints are tested to (against ONNX Runtime on real cells)
are in tests/backends/test_openvino.py and README's CPU engines section.

With ``streams`` above one the model is compiled for that many of OpenVINO's
streams (the THROUGHPUT hint, the threads shared among them) with an infer
request each, and that many batches run at once (see
:mod:`wbc_edge.backends.streams`); with one, for latency (all threads on one
batch).

Compiled models are cached (OpenVINO's ``CACHE_DIR``) in
``<cache>/openvino`` (see :func:`wbc_edge.backends.probe.cache_root`), so a
second load skips compilation; ``cache_dir=False`` turns the cache off.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path

import numpy as np

from ..errors import WbcEdgeError, require
from ..metadata import ONNX_METADATA_KEY, resolve_metadata
from .base import Runner
from .streams import check_streams, threads_per_stream

INSTALL = "pip install 'wbc-edge[openvino]'  (or: pip install openvino)"

#: inference-precision hints, by the names OpenVINO's CPU plugin takes
HINTS = ("f32", "bf16", "f16")


def cpu_capabilities(core=None) -> list[str]:
    """What OpenVINO's CPU plugin can run here (``OPTIMIZATION_CAPABILITIES``:
    FP32, BF16, FP16, INT8, ...)."""
    if core is None:
        core = require("openvino", "OpenVINO", INSTALL).Core()
    return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def default_hint(precision: str, capabilities: list[str]) -> str:
    """The inference-precision hint for a model of ``precision`` on a CPU with
    ``capabilities``: the fastest reduced format for FP32 models, f32 for the
    float parts of the others."""
    if precision != "fp32":
        return "f32"
    if "BF16" in capabilities:
        return "bf16"
    if "FP16" in capabilities:
        return "f16"
    return "f32"


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None,
                 inference_precision: str | None = None, cache_dir: str | os.PathLike | bool | None = None,
                 streams: int = 1):
        """
        Args:
            path: an ONNX model with uint8 NHWC input (``wbc-edge export``,
                ``calibrate``).
            num_threads: CPU threads for inference; default: every CPU this
                process may use.
            inference_precision: ``"f32"``, ``"bf16"`` or ``"f16"``; None:
                :func:`default_hint` for the model's precision and this CPU.
            cache_dir: where compiled models are cached; None: the per-user
                cache (``<cache>/openvino``); False: no cache.
            streams: batches inferred at once, the threads shared among them.
        """
        ov = require("openvino", "OpenVINO", INSTALL)
        self.streams = check_streams(streams)
        path = Path(path)
        if not path.is_file():
            raise WbcEdgeError(f"{path}: ONNX model not found")
        if path.suffix.lower() != ".onnx":
            raise WbcEdgeError(f"{path}: the openvino backend runs ONNX models (.onnx)")
        if inference_precision is not None and inference_precision not in HINTS:
            raise WbcEdgeError(f"inference_precision {inference_precision!r}: choose one of {', '.join(HINTS)}")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as error:  # OpenVINO raises RuntimeError subclasses of its own
            raise WbcEdgeError(f"{path}: OpenVINO cannot read it ({error})") from None
        embedded = None
        if model.has_rt_info(["framework", ONNX_METADATA_KEY]):
            embedded = model.get_rt_info(["framework", ONNX_METADATA_KEY]).astype(str)
        super().__init__(resolve_metadata(path, embedded))
        self.path = path
        self._check_io(model)
        self.capabilities = cpu_capabilities(core)
        self.inference_precision = inference_precision or default_hint(self.metadata.precision, self.capabilities)
        self.num_threads, self.threads_per_stream = threads_per_stream(num_threads, self.streams)
        self.cache_dir = _usable_cache_dir(cache_dir)
        if self.cache_dir is not None:
            core.set_property({"CACHE_DIR": str(self.cache_dir)})
        config = {"INFERENCE_PRECISION_HINT": self.inference_precision,
                  "INFERENCE_NUM_THREADS": self.num_threads,
                  "PERFORMANCE_HINT": "LATENCY"}
        if self.streams > 1:
            config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.streams})
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as error:
            raise WbcEdgeError(f"{path}: OpenVINO cannot compile it for the CPU ({error})") from None
        self.loaded_from_cache = bool(self.compiled.get_property("LOADED_FROM_CACHE"))
        self.version = ov.get_version()
        # One infer request per stream; a request is not thread-safe, so each
        # batch takes a free one (and waits for one when all are busy).
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.streams):
            self._requests.put(self.compiled.create_infer_request())

    def _check_io(self, model) -> None:
        inputs, outputs = model.inputs, model.outputs
        if len(inputs) != 1 or inputs[0].get_element_type().get_type_name() != "u8":
            raise WbcEdgeError(f"{self.path}: expected one uint8 input [N, H, W, 3], found "
                               f"{[(i.get_any_name(), str(i.get_element_type()), str(i.get_partial_shape())) for i in inputs]}")
        shape = inputs[0].get_partial_shape()
        tail = [d.get_length() if d.is_static else None for d in list(shape)[1:]] if shape.rank.is_static else None
        if tail is None or len(tail) != 3 or tuple(tail) != self.input_shape:
            raise WbcEdgeError(f"{self.path}: input shape {shape} does not match the metadata's "
                               f"[N, {', '.join(map(str, self.input_shape))}]")
        if len(outputs) < 1:
            raise WbcEdgeError(f"{self.path}: the model has no output")

    def _infer(self, images: np.ndarray) -> np.ndarray:
        request = self._requests.get()
        try:
            request.infer({0: np.ascontiguousarray(images)})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)
        finally:
            if not self._closed:  # closed meanwhile: the request goes with this batch
                self._requests.put(request)

    def close(self) -> None:
        super().close()
        while True:  # the requests not in use go now; one in use goes when its batch ends
            try:
                self._requests.get_nowait()
            except (queue.Empty, AttributeError):
                break
        self.compiled = None

    def describe(self) -> dict:
        return {**super().describe(), "model": str(self.path), "device": "CPU",
                "inference_precision": self.inference_precision, "num_threads": self.num_threads,
                "streams": self.streams, "threads_per_stream": self.threads_per_stream,
                "cache_dir": None if self.cache_dir is None else str(self.cache_dir),
                "loaded_from_cache": self.loaded_from_cache, "openvino": self.version}


def _usable_cache_dir(cache_dir: str | os.PathLike | bool | None) -> Path | None:
    """The cache folder to use (made if missing), or None: caching off, or
    no usable folder (a read-only home), where models compile each load."""
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        from .probe import cache_root

        folder = cache_root() / "openvino"
    else:
        folder = Path(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK | os.X_OK) else None
