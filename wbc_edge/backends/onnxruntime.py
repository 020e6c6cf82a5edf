"""ONNX Runtime backend: the embedded default that runs anywhere.

Runs the FP32, FP16 and INT8 (Q/DQ) ONNX models. Providers are an explicit
choice, as in ``onnxruntime.InferenceSession``; by default the CPU. Idle
worker threads sleep instead of spinning (``spinning=True`` restores
onnxruntime's default). With ``streams`` above one, that many batches run at
once, each in a session of its own with its share of the threads (concurrent
``run`` calls on one session would share that session's one thread pool):
see :mod:`wbc_edge.backends.streams`.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import WbcEdgeError, require
from ..metadata import ONNX_METADATA_KEY, resolve_metadata
from .base import Runner
from .streams import check_streams, threads_per_stream

INSTALL = "pip install onnxruntime  (or onnxruntime-gpu for CUDA, never both)"


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 num_threads: int | None = None, spinning: bool = False, streams: int = 1):
        ort = require("onnxruntime", "ONNX Runtime", INSTALL)
        self.streams = check_streams(streams)
        path = Path(path)
        if not path.is_file():
            raise WbcEdgeError(f"{path}: ONNX model not found")
        available = ort.get_available_providers()
        providers = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in providers if p not in available]
        if missing:
            raise WbcEdgeError(f"ONNX Runtime providers {missing} are not available here; available: {available}")
        options = ort.SessionOptions()
        self.num_threads, self.threads_per_stream = threads_per_stream(num_threads, self.streams)
        options.intra_op_num_threads = self.threads_per_stream
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads spin by default; on an analyzer's few cores that
        # steals the CPU the decoding and preprocessing threads need meanwhile.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            # A session per stream, each with its own thread pool; a batch takes a free one.
            self._sessions: queue.SimpleQueue = queue.SimpleQueue()
            self._sessions.put(self.session)
            for _ in range(self.streams - 1):
                self._sessions.put(ort.InferenceSession(str(path), sess_options=options, providers=providers))
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise WbcEdgeError(f"{path}: ONNX Runtime cannot load it ({error})") from None
        embedded = self.session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        super().__init__(resolve_metadata(path, embedded))
        self.path = path
        self.providers = self.session.get_providers()
        self._check_io()

    def _check_io(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or inputs[0].type != "tensor(uint8)":
            raise WbcEdgeError(f"{self.path}: expected one uint8 input [N, H, W, 3], found "
                               f"{[(i.name, i.type, i.shape) for i in inputs]}")
        shape = inputs[0].shape
        if len(shape) != 4 or tuple(shape[1:]) != self.input_shape:
            raise WbcEdgeError(f"{self.path}: input shape {shape} does not match the metadata's "
                               f"[N, {', '.join(map(str, self.input_shape))}]")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name

    def _infer(self, images: np.ndarray) -> np.ndarray:
        if self.streams == 1:  # InferenceSession.run is thread-safe: no lock needed
            (logits,) = self.session.run([self.output_name], {self.input_name: images})
            return np.asarray(logits, dtype=np.float32)
        session = self._sessions.get()
        try:
            (logits,) = session.run([self.output_name], {self.input_name: images})
            return np.asarray(logits, dtype=np.float32)
        finally:
            if not self._closed:  # closed meanwhile: the session goes with this batch
                self._sessions.put(session)

    def close(self) -> None:
        super().close()
        self.session = None
        while True:  # the sessions not in use go now; one in use goes when its batch ends
            try:
                self._sessions.get_nowait()
            except (queue.Empty, AttributeError):
                break

    def describe(self) -> dict:
        return {**super().describe(), "providers": self.providers, "model": str(self.path),
                "num_threads": self.num_threads, "streams": self.streams,
                "threads_per_stream": self.threads_per_stream}
