"""TensorRT backend: the production path on the analyzer's NVIDIA GPU.

Runs an engine made by ``wbc-edge build-engine`` with TensorRT 10.x (Jetson,
JetPack) or 11.x, or with the ~100 MB lean runtime (``tensorrt_lean``) when the
engine was built ``--version-compatible``. CUDA memory, streams and graphs come
from cuda-python (:mod:`.cuda`); every return code is checked.

Per batch slot (two by default, :mod:`.cuda_pipeline`): pinned host buffers
sized for the profile's maximum batch, device buffers, a stream, and an
execution context on an optimization profile of its own whose activation
memory the runner owns (TensorRT requires one context per concurrent stream).
``run_batches`` fills each job straight into a slot's pinned input while the
GPU runs the previous one::

    with TensorRTRunner("model.engine") as runner:
        for job, outputs in runner.run_batches(jobs):   # base.BatchJob: count, fill(out)
            outputs["logits"]

Batches below the profile's minimum are padded to it (only the real rows come
back). Every TensorRT object is given the module's one logger
(:func:`shared_logger`), and each call reports the errors logged since it began.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import MetadataError, MissingDependencyError, ModelMismatchError, WbcEdgeError
from ..metadata import ModelMetadata, sidecar_path
from . import cuda
from .base import BatchJob, Outputs, Runner, split_outputs
from .cuda_pipeline import BatchPipeline, Slot
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

#: batches in flight at once by default (one filled while the GPU runs the other)
DEFAULT_SLOTS = 2

#: TensorRT 10.x spellings used only where the 11.x one is absent (10.0 lacks
#: ``device_memory_size_v2``; 11.x removed ``device_memory_size``). The
#: API-conformance test checks that each one really is gone from 11.x.
TENSORRT_10_FALLBACKS = frozenset({"ICudaEngine.device_memory_size"})

#: members some supported version lacks -> what the code uses there instead
#: (it picks with hasattr); checked against every version's API manifest
TENSORRT_ALTERNATIVES = {
    "ICudaEngine.device_memory_size_v2": "ICudaEngine.device_memory_size",    # 10.0: v1 only; 11.x: v2 only
    "IExecutionContext.set_device_memory": "IExecutionContext.device_memory",  # 10.0: the address alone
}

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


#: module -> its one logger. TensorRT keeps a single process-wide logger: one
#: given later is ignored while any runtime or builder lives, and a freed one
#: would be called after its death. So each TensorRT module gets exactly one,
#: made at first use and never freed (as NVIDIA's samples and Polygraphy do).
_LOGGERS: dict = {}
_LOGGERS_LOCK = threading.Lock()


def shared_logger(trt):
    """The one logger of ``trt`` (``tensorrt`` or ``tensorrt_lean``) that every
    Runtime, Builder, OnnxParser and Refitter of this process is given. It
    forwards to Python logging and numbers the errors it receives, so that a
    call can report exactly the errors logged since it started
    (``mark = logger.mark()`` ... ``logger.errors_since(mark)``)."""
    with _LOGGERS_LOCK:
        logger = _LOGGERS.get(trt)
        if logger is None:
            logger = _LOGGERS[trt] = _make_logger(trt)
        return logger


def _make_logger(trt, name: str = "wbc_edge.tensorrt"):
    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)  # pybind11 needs the base initialised explicitly
            self._errors: collections.deque[tuple[int, str]] = collections.deque(maxlen=64)
            self._count = 0  # errors so far (``_errors`` keeps only the last 64)
            self._lock = threading.Lock()  # TensorRT logs from its own threads too
            self._log = logging.getLogger(name)

        def log(self, severity, msg):
            level = int(severity)  # 0 internal error, 1 error, 2 warning, 3 info, 4 verbose
            if level <= 1:
                with self._lock:
                    self._count += 1
                    self._errors.append((self._count, msg))
                self._log.error(msg)
            elif level == 2:
                self._log.warning(msg)
            elif level == 3:
                self._log.info(msg)

        def mark(self) -> int:
            """A point to report errors from: errors_since(mark) gives only later ones."""
            return self._count

        def errors_since(self, mark: int) -> str:
            """The errors logged after ``mark``, joined; a placeholder when none."""
            with self._lock:
                recent = [message for number, message in self._errors if number > mark]
            return "; ".join(recent) if recent else "TensorRT gave no reason (see its log above)"

    return Logger()


#: TensorRT objects that failed to start (see start_tensorrt); never freed.
_UNUSABLE: list = []


def start_tensorrt(factory, trt, what: str):
    """``factory(shared_logger(trt))`` (``trt.Runtime``, ``trt.Builder``, or a
    function making an ``OnnxParser`` or ``Refitter`` with that logger),
    refused with a WbcEdgeError carrying TensorRT's own messages when it
    returns NULL or logs an error while starting.

    A NULL comes back from pybind11 as ``TypeError: pybind11::init(): factory
    function returned nullptr``. And TensorRT hands back a live-looking object
    even when it could not initialise CUDA (it only logs the error), and the
    next call on that object kills the process: seen with tensorrt_lean 11.4
    and no usable CUDA driver, where ``Runtime(logger).deserialize_cuda_engine(...)``,
    or freeing the Runtime, ends in SIGSEGV. Callers check the driver first
    (``check_driver_for``), so this is the last line of defence; the process
    may still die when it exits.
    """
    logger = shared_logger(trt)
    mark = logger.mark()
    try:
        started = factory(logger)
    except TypeError as error:  # NULL from TensorRT's factory
        if "nullptr" not in str(error):
            raise
        started = None
    if started is None or logger.mark() > mark:
        if started is not None:
            _UNUSABLE.append(started)  # freeing it crashes too
        reason = logger.errors_since(mark)
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
        slots: batches in flight at once (fill one while the GPU runs the
            other). Each slot runs on an optimization profile of its own
            (TensorRT forbids concurrent contexts on one profile), so at most
            the engine's number of profiles (``build-engine --profiles``);
            default: two, or one for an engine with a single profile.
        cuda_graphs: batch sizes to replay as CUDA graphs (captured at load;
            each costs one more execution context per slot). Other sizes run
            normally, and so does a size whose capture fails (with a warning).
        strict_gpu: refuse an engine built on another GPU model of the same
            compute capability (TensorRT only warns); False: warn.
    """

    name = "tensorrt"
    fills_input_memory = True

    def __init__(self, path: str | os.PathLike, device: int | str = 0, runtime: str = "auto",
                 slots: int | None = None, cuda_graphs: Sequence[int] = (), strict_gpu: bool = True):
        self._pipeline: BatchPipeline | None = None
        self._engine = self._runtime = self._logger = None
        self._closed = False
        path = Path(path)
        if not path.is_file():
            raise WbcEdgeError(f"{path}: TensorRT engine not found")
        if runtime not in RUNTIMES:
            raise WbcEdgeError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
        if slots is not None and (not isinstance(slots, int) or isinstance(slots, bool) or slots < 1):
            raise WbcEdgeError(f"slots must be a positive integer, got {slots!r}")
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
        bad = [n for n in sizes if not 1 <= n <= record.max_batch]
        if bad:
            raise WbcEdgeError(f"cuda_graphs batch sizes {bad} are outside the engine's profile "
                               f"{record.min_batch}..{record.max_batch}")
        # a size below the profile's minimum runs padded to it: that is the graph to capture
        return tuple(sorted({max(n, record.min_batch) for n in sizes}))

    def _load(self, trt, slots: int | None, strict_gpu: bool) -> None:
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

        self._logger = shared_logger(trt)
        runtime = self._runtime = start_tensorrt(trt.Runtime, trt, "runtime")
        if verdict.allow_host_code:
            # A version-compatible plan carries the lean runtime that executes it; TensorRT loads that code
            # only when told the plan is trusted. It is: its sha256 matched the JSON written when it was built.
            runtime.engine_host_code_allowed = True
        mark = self._logger.mark()
        engine = runtime.deserialize_cuda_engine(plan)
        del plan
        if engine is None:
            raise ModelMismatchError(f"{self.path}: TensorRT {self.tensorrt_version} could not load the engine: "
                                     f"{self._logger.errors_since(mark)}")
        self._engine = engine
        self._bind_io(trt, engine)
        profiles = int(engine.num_optimization_profiles)
        if slots is None:
            slots = min(DEFAULT_SLOTS, profiles)
        if slots > profiles:
            raise WbcEdgeError(
                f"{self.path} has {profiles} optimization profile(s) and {slots} slots were asked for: each slot "
                "runs on a profile of its own (TensorRT forbids concurrent execution contexts on one profile); "
                f"rebuild it with 'wbc-edge build-engine --profiles {slots}' or use slots={profiles}")
        self._pipeline = BatchPipeline(
            self._launch, max_batch=self.max_batch_size, min_batch=self.min_batch_size,
            input_shape=self.input_shape, input_dtype=np.uint8, output_shape=(self.metadata.num_outputs,),
            output_dtype=np.float32, slots=slots, device=self.device)
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
        for index in range(engine.num_optimization_profiles):  # build-engine makes them identical
            low, opt, high = (tuple(dims) for dims in engine.get_tensor_profile_shape(self.input_name, index))
            profile = (low[0], opt[0], high[0])
            if profile != (record.min_batch, record.opt_batch, record.max_batch):
                raise MetadataError(f"{where}: the engine's batch profile {index} is {profile}, its JSON says "
                                    f"{(record.min_batch, record.opt_batch, record.max_batch)}: the JSON is not this "
                                    "engine's")
        self.min_batch_size = record.min_batch
        self.max_batch_size = record.max_batch

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
        mark = self._logger.mark()
        context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            raise WbcEdgeError(f"TensorRT could not create an execution context: {self._logger.errors_since(mark)}")
        scratch = slot.extra["scratch"]
        if scratch is not None:
            if hasattr(type(context), "set_device_memory"):  # 10.1+ and 11.x: address and size
                context.set_device_memory(scratch.ptr, scratch.nbytes)
            else:  # 10.0: the address alone
                context.device_memory = scratch.ptr
        # the slot's own optimization profile (identical to the others): no two slots' contexts share one
        if slot.index and not context.set_optimization_profile_async(slot.index, slot.stream.handle):
            raise WbcEdgeError(f"TensorRT refused optimization profile {slot.index}: "
                               f"{self._logger.errors_since(mark)}")
        for name, buffer in ((self.input_name, slot.device_input), (self.output_name, slot.device_output)):
            if not context.set_tensor_address(name, buffer.ptr):
                raise WbcEdgeError(f"TensorRT refused the address of '{name}': {self._logger.errors_since(mark)}")
        return context

    def _set_shape(self, context, count: int) -> None:
        mark = self._logger.mark()
        if not context.set_input_shape(self.input_name, (count, *self.input_shape)):
            raise WbcEdgeError(f"TensorRT refused batch size {count} (profile {self.min_batch_size}.."
                               f"{self.max_batch_size}): {self._logger.errors_since(mark)}")

    def _capture_graph(self, trt, engine, slot: Slot, count: int) -> None:
        """Captures a CUDA graph of the engine at batch ``count``; on failure,
        warns and leaves that size to run normally (as trtexec does)."""
        # A graph bakes in its context's shapes and addresses: each batch size gets its own context.
        context = self._new_context(trt, engine, slot)
        self._set_shape(context, count)
        mark = self._logger.mark()
        # One ordinary run first, so that TensorRT finishes its shape-dependent setup outside the capture.
        if not context.execute_async_v3(slot.stream.handle):
            raise WbcEdgeError(f"TensorRT execution failed: {self._logger.errors_since(mark)}")
        slot.stream.synchronize()
        try:
            with cuda.GraphCapture(slot.stream) as capture:
                if not context.execute_async_v3(slot.stream.handle):
                    raise WbcEdgeError(self._logger.errors_since(mark))
        except (cuda.CudaError, WbcEdgeError) as error:
            warnings.warn(f"{self.path}: the engine cannot be captured in a CUDA graph at batch {count} ({error}); "
                          "that batch size runs without a graph", RuntimeWarning, stacklevel=4)
            slot.stream.synchronize()  # what the failed capture may have left queued
            return
        slot.extra["graph_contexts"].append(context)
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
        mark = self._logger.mark()
        if not context.execute_async_v3(slot.stream.handle):
            raise WbcEdgeError(f"TensorRT execution failed: {self._logger.errors_since(mark)}")

    def run_batches(self, jobs: Iterable[BatchJob]) -> Iterator[tuple[BatchJob, Outputs | None]]:
        """Each job with its outputs, in order: each job is filled straight
        into a slot's pinned input while the GPU runs the previous one. A job
        larger than :attr:`max_batch_size` is filled on the host and run as
        several batches."""
        pipeline = self._open_pipeline()
        for job, rows in _merge_parts(pipeline.map(_split_jobs(jobs, self.max_batch_size))):
            yield job, None if rows is None else split_outputs(self.metadata, rows)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` -> float32 output rows ``[N, outputs]``. More
        than :attr:`max_batch_size` images run as several batches, the copy of
        one overlapping the GPU work of the previous."""
        self.check_batch(images)
        if len(images) == 0:
            return np.empty((0, self.metadata.num_outputs), np.float32)
        job = BatchJob(len(images), lambda out: images if out is None else _copy_into(out, images))
        [(_, rows)] = _merge_parts(self._open_pipeline().map(_split_jobs([job], self.max_batch_size)))
        return rows

    def _infer(self, images: np.ndarray) -> np.ndarray:
        return self.infer(images)

    def _open_pipeline(self) -> BatchPipeline:
        if self._closed or self._pipeline is None:
            raise RuntimeError(f"{self.name}: the runner is closed")
        return self._pipeline

    @property
    def num_slots(self) -> int:
        return self._open_pipeline().num_slots

    # --- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Waits for the batches in progress (in any thread) and the GPU, then
        frees graphs, contexts, engine and all CUDA memory and streams, on the
        runner's device whichever thread calls it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        pipeline, self._pipeline = self._pipeline, None
        errors = []
        if pipeline is not None:
            try:
                pipeline.stop()  # no submit or collect in progress anywhere from here on
            except Exception as error:
                errors.append(error)
            scratch = []
            for slot in pipeline.slots:
                graphs = list(slot.extra.get("graphs", {}).values())
                scratch.append(slot.extra.get("scratch"))
                try:
                    cuda.set_device(self.device)
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
        self._engine = None  # engine before runtime; the logger is never freed
        self._runtime = None
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


# --- jobs larger than the engine's largest batch ---------------------------------


class _Part:
    """Rows ``start:stop`` of a job filled on the host (a job over the engine's maximum batch)."""

    __slots__ = ("count", "images", "job", "last")

    def __init__(self, job: BatchJob, images: np.ndarray, last: bool):
        self.job, self.images, self.last, self.count = job, images, last, len(images)

    def fill(self, out: np.ndarray | None) -> np.ndarray:
        return self.images if out is None else _copy_into(out, self.images)


def _copy_into(out: np.ndarray, images: np.ndarray) -> np.ndarray:
    np.copyto(out[:len(images)], images, casting="no")
    return out[:len(images)]


def _split_jobs(jobs: Iterable[BatchJob], limit: int) -> Iterator:
    """Jobs as the pipeline takes them: those over ``limit`` images filled on
    the host and cut into parts."""
    for job in jobs:
        if job.count <= limit:
            yield job
            continue
        images = job.fill(None)
        if images is None or not len(images):
            yield _Part(job, np.empty((0,), np.uint8), last=True)
            continue
        for start in range(0, len(images), limit):
            yield _Part(job, images[start:start + limit], last=start + limit >= len(images))


def _merge_parts(results: Iterator) -> Iterator[tuple[BatchJob, np.ndarray | None]]:
    """The pipeline's results with the parts of a split job joined again."""
    parts: list[np.ndarray] = []
    for job, rows in results:
        if not isinstance(job, _Part):
            yield job, rows
            continue
        if rows is not None:
            parts.append(rows)
        if job.last:
            yield job.job, np.concatenate(parts) if parts else None
            parts = []
