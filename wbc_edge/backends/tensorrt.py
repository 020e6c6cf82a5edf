"""TensorRT backend: the production path on the analyzer's NVIDIA GPU.

Runs an engine made by ``wbc-edge build-engine`` with TensorRT 10.x (Jetson,
JetPack) or 11.x, or with the ~100 MB lean runtime (``tensorrt_lean``) when the
engine was built ``--version-compatible``. CUDA memory, streams and graphs come
from cuda-python (:mod:`.cuda`); every return code is checked.

Per batch slot (two by default, :mod:`.cuda_pipeline`): pinned host buffers
sized for the profile's maximum batch, device buffers, a stream, and an
execution context whose activation memory the runner owns (TensorRT requires
one context per concurrent stream). While the GPU runs one slot, the host
fills the other::

    with TensorRTRunner("model.engine") as runner:
        for logits in runner.pipeline((len(chunk), lambda out, c=chunk: preprocess_batch(c, size, out=out))
                                      for chunk in chunks):
            ...

or step by step: ``batch = runner.reserve(n)``, ``preprocess_batch(images,
size, out=batch.inputs)``, ``runner.submit(batch)``, ``runner.collect(batch)``.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import MetadataError, MissingDependencyError, ModelMismatchError, WbcEdgeError
from ..metadata import ModelMetadata, sidecar_path
from . import cuda
from .base import Runner
from .cuda_pipeline import Batch, BatchPipeline, Slot
from .tensorrt_compat import (
    INSTALL_LEAN,
    INSTALL_TENSORRT,
    NEEDS_GPU,
    EngineRecord,
    RuntimeFacts,
    check_driver_for,
    check_engine,
    check_plan_digest,
)

RUNTIMES = ("auto", "full", "lean")

#: TensorRT 10.x spellings used only where the 11.x one is absent (10.0 lacks
#: ``device_memory_size_v2``; 11.x removed ``device_memory_size``). The
#: API-conformance test checks that each one really is gone from 11.x.
TENSORRT_10_FALLBACKS = frozenset({"ICudaEngine.device_memory_size"})

log = logging.getLogger("wbc_edge.tensorrt")


def import_tensorrt(runtime: str = "full"):
    """``tensorrt`` (``runtime="full"``) or ``tensorrt_lean`` (``"lean"``), or
    MissingDependencyError saying how to install it."""
    name, what, install = {
        "full": ("tensorrt", "TensorRT (the 'tensorrt' package)", f"{INSTALL_TENSORRT} (and {NEEDS_GPU})"),
        "lean": ("tensorrt_lean", "the TensorRT lean runtime (the 'tensorrt_lean' package)",
                 f"{INSTALL_LEAN} (and {NEEDS_GPU})"),
    }[runtime]
    try:
        return importlib.import_module(name)
    except (ImportError, OSError) as error:  # OSError: bindings present, libraries not
        raise MissingDependencyError(what, install, error) from error


def make_logger(trt, name: str = "wbc_edge.tensorrt"):
    """A TensorRT logger that forwards to Python logging and keeps the last
    errors, so that a failed call can say why."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)  # pybind11 needs the base initialised explicitly
            self.errors: collections.deque[str] = collections.deque(maxlen=20)
            self.error_count = 0  # all errors so far (``errors`` keeps only the last 20)
            self._log = logging.getLogger(name)

        def log(self, severity, msg):
            level = int(severity)  # 0 internal error, 1 error, 2 warning, 3 info, 4 verbose
            if level <= 1:
                self.errors.append(msg)
                self.error_count += 1
                self._log.error(msg)
            elif level == 2:
                self._log.warning(msg)
            elif level == 3:
                self._log.info(msg)

        def last_errors(self, since: int = 0) -> str:
            """The kept errors, or only those logged after the ``since``-th."""
            recent = list(self.errors)[-(self.error_count - since):] if self.error_count > since else []
            return "; ".join(recent) if recent else "TensorRT gave no reason (see its log above)"

    return Logger()


#: TensorRT objects that failed to start (see start_tensorrt); never freed.
_UNUSABLE: list = []


def start_tensorrt(factory, logger, what: str):
    """``factory(logger)`` (``trt.Runtime`` or ``trt.Builder``), refused with a
    WbcEdgeError when TensorRT logs an error while starting.

    TensorRT hands back a live-looking object even when it could not initialise
    CUDA (it only logs the error), and the next call on that object kills the
    process: seen with tensorrt_lean 11.4 and no usable CUDA driver, where
    ``Runtime(logger).deserialize_cuda_engine(...)``, or freeing the Runtime,
    ends in SIGSEGV. Callers check the driver first (``check_driver_for``), so this
    is the last line of defence; the process may still die when it exits.
    """
    errors_before = logger.error_count
    started = factory(logger)
    if started is None or logger.error_count > errors_before:
        if started is not None:
            _UNUSABLE.append((started, logger))  # freeing it crashes too; it may still call its logger
        reason = logger.last_errors(since=errors_before)
        hint = cuda.NO_DEVICE_HINT if "cuda" in reason.lower() else ""
        raise WbcEdgeError(f"TensorRT could not start its {what}: {reason}{hint}")
    return started


def load_engine_metadata(path: Path) -> tuple[ModelMetadata, EngineRecord]:
    """An engine's JSON (``model.engine`` -> ``model.json``) and its TensorRT record."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise MetadataError(f"{path}: no metadata: expected {sidecar.name} beside it (written by "
                            "'wbc-edge build-engine': class names, input size, GPU and TensorRT version)")
    meta = ModelMetadata.load(sidecar)
    return meta, EngineRecord.of(meta, where=str(path))


class TensorRTRunner(Runner):
    """Runs a TensorRT engine.

    Args:
        path: the ``.engine`` (or ``.plan``) file; its JSON sits beside it.
        device: GPU index, or ``"cuda"`` / ``"cuda:N"``.
        runtime: ``"full"`` (``tensorrt``), ``"lean"`` (``tensorrt_lean``, for
            engines built ``--version-compatible``), or ``"auto"``: full if
            installed, else lean where the engine allows it.
        slots: batches in flight at once (2: fill one while the GPU runs the other).
        cuda_graphs: batch sizes to replay as CUDA graphs (captured at load;
            each costs one more execution context per slot). Other sizes run
            normally.
        strict_gpu: refuse an engine built on another GPU model of the same
            compute capability (TensorRT only warns); False: warn.
    """

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, device: int | str = 0, runtime: str = "auto", slots: int = 2,
                 cuda_graphs: Sequence[int] = (), strict_gpu: bool = True):
        self._pipeline: BatchPipeline | None = None
        self._engine = self._runtime = self._logger = None
        self._closed = False
        path = Path(path)
        if not path.is_file():
            raise WbcEdgeError(f"{path}: TensorRT engine not found")
        if runtime not in RUNTIMES:
            raise WbcEdgeError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        meta, record = load_engine_metadata(path)
        super().__init__(meta)
        self.path = path
        self.record = record
        self.device = cuda.parse_device(device)
        self.cuda_graph_sizes = self._graph_sizes(cuda_graphs, record)
        trt, self.lean = self._import(runtime, record)
        self.tensorrt_version = str(trt.__version__)
        try:
            self._load(trt, slots, strict_gpu)
        except BaseException:
            self.close()
            raise

    # --- loading -------------------------------------------------------------

    @staticmethod
    def _import(runtime: str, record: EngineRecord):
        if runtime != "auto":
            return import_tensorrt(runtime), runtime == "lean"
        try:
            return import_tensorrt("full"), False
        except MissingDependencyError as full_missing:
            if not record.version_compatible:
                raise MissingDependencyError(
                    "TensorRT (the 'tensorrt' package; this engine is not version-compatible, so the lean "
                    "runtime cannot run it)", f"{INSTALL_TENSORRT} (and {NEEDS_GPU})") from full_missing
            try:
                return import_tensorrt("lean"), True
            except MissingDependencyError:
                raise MissingDependencyError(
                    "TensorRT (the 'tensorrt' package, or the lean runtime 'tensorrt_lean' for this "
                    "version-compatible engine)", f"{INSTALL_LEAN} or {INSTALL_TENSORRT} (and {NEEDS_GPU})"
                ) from full_missing

    @staticmethod
    def _graph_sizes(cuda_graphs: Sequence[int], record: EngineRecord) -> tuple[int, ...]:
        sizes = sorted({int(n) for n in cuda_graphs})
        bad = [n for n in sizes if not record.min_batch <= n <= record.max_batch]
        if bad:
            raise WbcEdgeError(f"cuda_graphs batch sizes {bad} are outside the engine's profile "
                               f"{record.min_batch}..{record.max_batch}")
        return tuple(sizes)

    def _load(self, trt, slots: int, strict_gpu: bool) -> None:
        cuda.set_device(self.device)
        gpu = cuda.device_info(self.device)
        self.gpu = gpu
        verdict = check_engine(self.record, RuntimeFacts(self.tensorrt_version, self.lean, gpu.name,
                                                         gpu.compute_capability),
                               strict_gpu=strict_gpu, where=str(self.path))
        for message in verdict.warnings:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        check_driver_for(trt, gpu.driver_version)
        plan = self.path.read_bytes()
        check_plan_digest(plan, self.record, where=str(self.path))

        self._logger = make_logger(trt)
        runtime = self._runtime = start_tensorrt(trt.Runtime, self._logger, "runtime")
        if verdict.allow_host_code:
            # A version-compatible plan carries the lean runtime that executes it; TensorRT loads that code
            # only when told the plan is trusted. It is: its sha256 matched the JSON written when it was built.
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(plan)
        del plan
        if engine is None:
            raise ModelMismatchError(f"{self.path}: TensorRT {self.tensorrt_version} could not load the engine: "
                                     f"{self._logger.last_errors()}")
        self._engine = engine
        self._bind_io(trt, engine)
        self._pipeline = BatchPipeline(
            self._launch, max_batch=self.max_batch_size, input_shape=self.input_shape, input_dtype=np.uint8,
            output_shape=(self.metadata.num_outputs,), output_dtype=np.float32, slots=slots, device=self.device)
        self._scratch_bytes = self._device_memory_size(engine)
        for slot in self._pipeline.slots:
            self._prepare_slot(trt, engine, slot)

    def _bind_io(self, trt, engine) -> None:
        """Finds the input and output tensors by name and checks them against the metadata."""
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        modes = {name: engine.get_tensor_mode(name) for name in names}
        inputs = [n for n in names if modes[n] == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if modes[n] == trt.TensorIOMode.OUTPUT]
        record, where = self.record, str(self.path)
        if inputs != [record.input_name] or outputs != [record.output_name]:
            raise ModelMismatchError(f"{where}: expected input '{record.input_name}' and output "
                                     f"'{record.output_name}', the engine has inputs {inputs} and outputs {outputs}")
        self.input_name, self.output_name = record.input_name, record.output_name
        height, width = self.metadata.input_size
        expected = {
            self.input_name: (trt.DataType.UINT8, (-1, height, width, 3)),
            self.output_name: (trt.DataType.FLOAT, (-1, self.metadata.num_outputs)),
        }
        for name, (dtype, shape) in expected.items():
            found_dtype, found_shape = engine.get_tensor_dtype(name), tuple(engine.get_tensor_shape(name))
            if found_dtype != dtype or found_shape != shape:
                raise ModelMismatchError(f"{where}: tensor '{name}' is {found_dtype} {list(found_shape)}, the "
                                         f"metadata needs {dtype} {list(shape)}")
            if engine.get_tensor_location(name) != trt.TensorLocation.DEVICE:
                raise ModelMismatchError(f"{where}: tensor '{name}' is not in device memory")
        low, opt, high = (tuple(dims) for dims in engine.get_tensor_profile_shape(self.input_name, 0))
        profile = (low[0], opt[0], high[0])
        if profile != (record.min_batch, record.opt_batch, record.max_batch):
            raise MetadataError(f"{where}: the engine's batch profile is {profile}, its JSON says "
                                f"{(record.min_batch, record.opt_batch, record.max_batch)}: the JSON is not this "
                                "engine's")
        self.min_batch_size = low[0]
        self.max_batch_size = high[0]

    @staticmethod
    def _device_memory_size(engine) -> int:
        # 11.x removed device_memory_size; 10.0 has only it; 10.1+ has both (v2 counts weight streaming).
        if hasattr(type(engine), "device_memory_size_v2"):
            return int(engine.device_memory_size_v2)
        return int(engine.device_memory_size)

    def _prepare_slot(self, trt, engine, slot: Slot) -> None:
        # One block of activation memory per slot, shared by the slot's contexts: they only ever run one
        # after another on the slot's stream (TensorRT allows this for contexts that never run concurrently).
        slot.extra.update(scratch=None, context=None, shape=None, graphs={}, graph_contexts=[])
        if self._scratch_bytes:
            slot.extra["scratch"] = cuda.DeviceBuffer(self._scratch_bytes)
        slot.extra["context"] = self._new_context(trt, engine, slot)
        for count in self.cuda_graph_sizes:
            self._capture_graph(trt, engine, slot, count)

    def _new_context(self, trt, engine, slot: Slot):
        # USER_MANAGED: the runner owns (and can report) all activation memory. 11.x removed
        # create_execution_context_without_device_memory, which 10.x also offered.
        context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise WbcEdgeError(f"TensorRT could not create an execution context: {self._logger.last_errors()}")
        scratch = slot.extra["scratch"]
        if scratch is not None:
            if hasattr(type(context), "set_device_memory"):  # 10.1+ and 11.x: address and size
                context.set_device_memory(scratch.ptr, scratch.nbytes)
            else:  # 10.0: the address alone
                context.device_memory = scratch.ptr
        for name, buffer in ((self.input_name, slot.device_input), (self.output_name, slot.device_output)):
            if not context.set_tensor_address(name, buffer.ptr):
                raise WbcEdgeError(f"TensorRT refused the address of '{name}': {self._logger.last_errors()}")
        return context

    def _set_shape(self, context, count: int) -> None:
        if not context.set_input_shape(self.input_name, (count, *self.input_shape)):
            raise WbcEdgeError(f"TensorRT refused batch size {count} (profile {self.min_batch_size}.."
                               f"{self.max_batch_size}): {self._logger.last_errors()}")

    def _capture_graph(self, trt, engine, slot: Slot, count: int) -> None:
        # A graph bakes in its context's shapes and addresses: each batch size gets its own context.
        context = self._new_context(trt, engine, slot)
        slot.extra["graph_contexts"].append(context)
        self._set_shape(context, count)
        # One ordinary run first, so that TensorRT finishes its shape-dependent setup outside the capture.
        if not context.execute_async_v3(slot.stream.handle):
            raise WbcEdgeError(f"TensorRT execution failed before graph capture: {self._logger.last_errors()}")
        slot.stream.synchronize()
        with cuda.GraphCapture(slot.stream) as capture:
            if not context.execute_async_v3(slot.stream.handle):
                raise WbcEdgeError(f"TensorRT cannot be captured in a CUDA graph at batch {count} "
                                   f"({self._logger.last_errors()}); load the engine without cuda_graphs")
        slot.extra["graphs"][count] = capture.graph

    # --- running -------------------------------------------------------------

    def _launch(self, slot: Slot, count: int) -> None:
        """Enqueues the engine on the slot's stream (BatchPipeline's launch step)."""
        graph = slot.extra["graphs"].get(count)
        if graph is not None:
            graph.launch(slot.stream)
            return
        context = slot.extra["context"]
        if slot.extra["shape"] != count:
            self._set_shape(context, count)
            slot.extra["shape"] = count
        if not context.execute_async_v3(slot.stream.handle):
            raise WbcEdgeError(f"TensorRT execution failed: {self._logger.last_errors()}")

    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` -> float32 logits ``[N, classes]``. More than
        :attr:`max_batch_size` images run as several batches, the copy of one
        overlapping the GPU work of the previous."""
        self.check_batch(images)
        limit = self.max_batch_size
        if len(images) == 0:
            return np.empty((0, self.metadata.num_outputs), np.float32)
        if len(images) <= limit:
            return self._infer(images)
        chunks = [images[i:i + limit] for i in range(0, len(images), limit)]
        jobs = ((len(chunk), lambda out, chunk=chunk: np.copyto(out, chunk)) for chunk in chunks)
        return np.concatenate(list(self._open_pipeline().map(jobs)))

    def _infer(self, images: np.ndarray) -> np.ndarray:
        return self._open_pipeline().run(images)

    def _open_pipeline(self) -> BatchPipeline:
        if self._closed or self._pipeline is None:
            raise RuntimeError(f"{self.name}: the runner is closed")
        return self._pipeline

    @property
    def num_slots(self) -> int:
        return self._open_pipeline().num_slots

    def reserve(self, count: int, timeout: float | None = None) -> Batch:
        """A pinned input buffer for ``count`` images: fill ``batch.inputs``
        (uint8 ``(count, H, W, 3)``), e.g. ``preprocess_batch(images, size,
        out=batch.inputs)``, then :meth:`submit` it. ``count`` is at most
        :attr:`max_batch_size`."""
        return self._open_pipeline().reserve(count, timeout)

    def submit(self, batch: Batch) -> None:
        """Starts the batch on the GPU and returns at once."""
        self._open_pipeline().submit(batch)

    def collect(self, batch: Batch) -> np.ndarray:
        """Waits for a submitted batch: float32 logits ``(count, classes)``."""
        return self._open_pipeline().collect(batch)

    def release(self, batch: Batch) -> None:
        """Gives back a reserved batch that will not be collected."""
        self._open_pipeline().release(batch)

    def pipeline(self, jobs: Iterable[tuple[int, Callable[[np.ndarray], object]]]) -> Iterator[np.ndarray]:
        """For each ``(count, fill)``, ``fill(inputs)`` writes ``count`` images
        into pinned memory; yields their logits in order, preprocessing the
        next batch while the GPU runs the previous one."""
        return self._open_pipeline().map(jobs)

    # --- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Waits for queued work, then frees graphs, contexts, engine and all
        CUDA memory and streams. Idempotent."""
        if self._closed:
            return
        self._closed = True
        pipeline, self._pipeline = self._pipeline, None
        errors = []
        if pipeline is not None:
            try:
                pipeline.synchronize()
            except Exception as error:
                errors.append(error)
            scratch = []
            for slot in pipeline.slots:
                graphs = list(slot.extra.get("graphs", {}).values())
                scratch.append(slot.extra.get("scratch"))
                try:
                    cuda.release_all(graphs)
                except Exception as error:
                    errors.append(error)
                slot.extra.clear()  # drops the execution contexts (before the engine, as TensorRT requires)
            try:
                cuda.release_all(scratch)
            except Exception as error:
                errors.append(error)
            try:
                pipeline.close()
            except Exception as error:
                errors.append(error)
        self._engine = None  # engine before runtime, runtime before logger
        self._runtime = None
        self._logger = None
        super().close()
        if errors:
            raise errors[0]

    def __del__(self):
        # A forgotten close() must not leak GPU memory for the life of the process.
        with contextlib.suppress(Exception):
            self.close()

    def describe(self) -> dict:
        record = self.record
        info = {
            **super().describe(),
            "model": str(self.path),
            "tensorrt": self.tensorrt_version,
            "runtime": "lean" if self.lean else "full",
            "built_with": record.version,
            "version_compatible": record.version_compatible,
            "hardware_compatibility": record.hardware_compatibility,
            "batch_profile": [record.min_batch, record.opt_batch, record.max_batch],
            "cuda_graph_batch_sizes": list(self.cuda_graph_sizes),
        }
        gpu = getattr(self, "gpu", None)
        if gpu is not None:
            info.update(device=self.device, gpu=gpu.name, compute_capability=gpu.compute_capability_str)
        if self._pipeline is not None:
            slots = self._pipeline.num_slots
            io_bytes = self.max_batch_size * (int(np.prod(self.input_shape)) + 4 * self.metadata.num_outputs)
            info["slots"] = slots
            # Activation memory and I/O buffers the runner allocated (the weights are TensorRT's own).
            info["device_memory_bytes"] = slots * (self._scratch_bytes + io_bytes)
            info["pinned_host_bytes"] = slots * io_bytes
        return info
