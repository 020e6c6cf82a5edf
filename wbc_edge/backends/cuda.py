"""CUDA through NVIDIA's cuda-python (``cuda.bindings.runtime``): checked
calls, pinned host buffers, device buffers, streams, events and graphs.

Every runtime call returns a tuple whose first item is a ``cudaError_t``;
:func:`check` turns a failure into :class:`CudaError` naming the call, so no
return code is ever dropped. Nothing here imports cuda-python until a function
is called, so ``import wbc_edge`` stays light.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import MissingDependencyError, WbcEdgeError

INSTALL = "pip install 'wbc-edge[tensorrt]'  (or: pip install cuda-bindings)"

_cudart = None
_import_lock = threading.Lock()


def cudart():
    """The cuda-python runtime module (``cuda.bindings.runtime``; the older
    ``cuda.cudart`` name of cuda-python < 12.6 works too)."""
    global _cudart
    if _cudart is None:
        with _import_lock:
            if _cudart is None:
                try:
                    from cuda.bindings import runtime as module
                except ImportError:
                    try:  # cuda-python before the cuda-bindings split (JetPack 6 images)
                        from cuda import cudart as module
                    except ImportError as error:
                        raise MissingDependencyError("cuda-python (NVIDIA's CUDA bindings)", INSTALL, error) from error
                _cudart = module
    return _cudart


class CudaError(WbcEdgeError, RuntimeError):
    """A CUDA runtime call failed; ``code`` is the ``cudaError_t``."""

    def __init__(self, call: str, code, hint: str = ""):
        self.call = call
        self.code = code
        self.hint = hint
        self.name, self.text = _describe_error(code)
        super().__init__(f"{call} failed: {self.name} ({self.text}){hint}")


# Errors that mean "there is no usable GPU here", not "this program is wrong".
_NO_DEVICE_ERRORS = ("cudaErrorInsufficientDriver", "cudaErrorNoDevice", "cudaErrorInitializationError",
                     "cudaErrorSystemDriverMismatch", "cudaErrorCompatNotSupportedOnDevice")
NO_DEVICE_HINT = "; no usable NVIDIA GPU: check the GPU and its driver with nvidia-smi"


def _describe_error(code) -> tuple[str, str]:
    rt = cudart()
    try:
        _, name = rt.cudaGetErrorName(code)
        _, text = rt.cudaGetErrorString(code)
        return name.decode(), text.decode()
    except Exception:  # an unknown code: still say which
        return str(code), "unknown CUDA error"


def check(result, call: str):
    """``(err, *values)`` from a cuda-python call -> the values, or CudaError.

    Returns None, the single value, or a tuple when the call returns several.
    """
    rt = cudart()
    err, *values = result
    if err != rt.cudaError_t.cudaSuccess:
        name = _describe_error(err)[0]
        raise CudaError(call, err, NO_DEVICE_HINT if name in _NO_DEVICE_ERRORS else "")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


# --- devices ---------------------------------------------------------------


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine depends on: the GPU model and its compute capability."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int
    driver_version: int  # e.g. 12080 for CUDA 12.8
    runtime_version: int

    @property
    def compute_capability_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


class NoDriverError(CudaError):
    """No NVIDIA driver at all (cudaDriverGetVersion gives 0)."""

    def __init__(self):
        self.call, self.code, self.hint = "cudaDriverGetVersion", None, NO_DEVICE_HINT
        self.name, self.text = "no driver", "no NVIDIA driver is installed"
        WbcEdgeError.__init__(self, f"{self.text} (cudaDriverGetVersion reports none){NO_DEVICE_HINT}")


def driver_version() -> int:
    """The CUDA version the NVIDIA driver supports (12080: 12.8); 0 when there is no driver."""
    return int(check(cudart().cudaDriverGetVersion(), "cudaDriverGetVersion"))


def _driver_hint(driver: int) -> str:
    """What to install when the driver is older than cuda-python's CUDA."""
    runtime = int(check(cudart().cudaRuntimeGetVersion(), "cudaRuntimeGetVersion"))
    major, minor = driver // 1000, driver % 1000 // 10
    return (f"; the NVIDIA driver supports CUDA {major}.{minor} and cuda-python is built for CUDA "
            f"{runtime // 1000}.{runtime % 1000 // 10}: update the driver, or install the wheels built for CUDA "
            f"{major}: pip install 'cuda-bindings=={major}.*' (and TensorRT's tensorrt-cu{major} packages)")


def device_count() -> int:
    """Visible CUDA devices. NoDriverError when no driver is installed;
    CudaError saying which wheels match when the driver is too old."""
    rt = cudart()
    driver = driver_version()  # first: with no driver, cudaGetDeviceCount says "insufficient driver"
    if not driver:
        raise NoDriverError()
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess and _describe_error(err)[0] == "cudaErrorInsufficientDriver":
        raise CudaError("cudaGetDeviceCount", err, _driver_hint(driver))
    return int(check((err, count), "cudaGetDeviceCount"))


def parse_device(device) -> int:
    """``0``, ``"cuda"``, ``"cuda:1"`` -> a device index."""
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool) and device >= 0:
        return int(device)
    if isinstance(device, str):
        text = device.strip().lower()
        if text == "cuda":
            return 0
        if text.startswith("cuda:") and text[5:].isdigit():
            return int(text[5:])
    raise WbcEdgeError(f"device must be a GPU index or 'cuda' / 'cuda:N', got {device!r}")


def device_info(index: int = 0) -> DeviceInfo:
    rt = cudart()
    count = device_count()
    if index >= count:
        raise WbcEdgeError(f"GPU {index} requested but {count} GPU(s) are visible here")
    prop = check(rt.cudaGetDeviceProperties(index), f"cudaGetDeviceProperties({index})")
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return DeviceInfo(
        index=index,
        name=str(name).strip(),
        compute_capability=(int(prop.major), int(prop.minor)),
        total_memory=int(prop.totalGlobalMem),
        driver_version=driver_version(),
        runtime_version=int(check(rt.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion")),
    )


def set_device(index: int) -> None:
    """Makes ``index`` the calling thread's current device (CUDA keeps it per thread)."""
    check(cudart().cudaSetDevice(index), f"cudaSetDevice({index})")


def memory_info() -> tuple[int, int]:
    """(free, total) bytes of the current device."""
    free, total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return int(free), int(total)


# --- memory ----------------------------------------------------------------


class _HostMemory:
    """``cudaMallocHost`` memory, owned by the numpy arrays that view it: it is
    freed when the last of them goes (or at once by :meth:`release`), so no
    view can outlive it."""

    def __init__(self, nbytes: int):
        self.ptr = int(check(cudart().cudaMallocHost(nbytes), f"cudaMallocHost({nbytes} bytes)"))
        self.__array_interface__ = {"data": (self.ptr, False), "shape": (nbytes,), "typestr": "|u1", "version": 3}

    def release(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            check(cudart().cudaFreeHost(ptr), "cudaFreeHost")

    def __del__(self):
        with contextlib.suppress(Exception):  # the interpreter may be shutting down
            self.release()


class PinnedBuffer:
    """Page-locked host memory (``cudaMallocHost``) seen as a numpy array.

    Copies from pinned memory run asynchronously at full bus speed, and the C++
    preprocessing writes straight into ``array`` (``preprocess_batch(out=...)``).
    Every view of ``array`` keeps the memory alive: :meth:`free` frees it at
    once when no view is left, else when the last one goes.
    """

    def __init__(self, shape: tuple[int, ...], dtype):
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(v) for v in shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        if self.nbytes <= 0:
            raise ValueError(f"pinned buffer of shape {self.shape} is empty")
        self._memory: _HostMemory | None = _HostMemory(self.nbytes)
        self.ptr = self._memory.ptr
        self.array = np.asarray(self._memory).view(self.dtype).reshape(self.shape)

    def free(self) -> None:
        memory, self._memory = self._memory, None
        self.ptr, self.array = 0, None
        # Only this frame holds it now (no view is left): free it here, where a failure can be reported.
        if memory is not None and sys.getrefcount(memory) <= 2:
            memory.release()


class DeviceBuffer:
    """``nbytes`` of GPU memory (``cudaMalloc``: 256-byte aligned, as TensorRT needs)."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        if self.nbytes <= 0:
            raise ValueError(f"device buffer of {nbytes} bytes is empty")
        self.ptr = int(check(cudart().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes} bytes)"))

    def free(self) -> None:
        if self.ptr:
            ptr, self.ptr = self.ptr, 0
            check(cudart().cudaFree(ptr), "cudaFree")


def copy_to_device(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    """Asynchronous host -> device copy of the first ``nbytes`` on ``stream``."""
    _check_size(nbytes, dst, src)
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
          "cudaMemcpyAsync (host to device)")


def copy_to_host(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    """Asynchronous device -> host copy of the first ``nbytes`` on ``stream``."""
    _check_size(nbytes, dst, src)
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle),
          "cudaMemcpyAsync (device to host)")


def _check_size(nbytes: int, *buffers) -> None:
    for buffer in buffers:
        if not buffer.ptr:
            raise RuntimeError("copy to or from a freed buffer")
        if not 0 < nbytes <= buffer.nbytes:
            raise ValueError(f"copy of {nbytes} bytes does not fit a buffer of {buffer.nbytes}")


# --- streams, events, graphs -------------------------------------------------


class Stream:
    """A non-blocking CUDA stream (it does not synchronize with the legacy
    default stream, which TensorRT warns against using)."""

    def __init__(self):
        rt = cudart()
        self._stream = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self.handle = int(self._stream)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            self.handle = 0
            check(cudart().cudaStreamDestroy(stream), "cudaStreamDestroy")


class Event:
    """A CUDA event without timing (cheapest to record and wait on), whose
    synchronize() sleeps instead of spinning a CPU core for the GPU's time."""

    def __init__(self):
        rt = cudart()
        flags = rt.cudaEventDisableTiming | rt.cudaEventBlockingSync
        self._event = check(rt.cudaEventCreateWithFlags(flags), "cudaEventCreateWithFlags")

    def record(self, stream: Stream) -> None:
        check(cudart().cudaEventRecord(self._event, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        check(cudart().cudaEventSynchronize(self._event), "cudaEventSynchronize")

    def query(self) -> bool:
        """True when all work before the record has finished."""
        rt = cudart()
        (err,) = rt.cudaEventQuery(self._event)
        if err == rt.cudaError_t.cudaErrorNotReady:
            return False
        check((err,), "cudaEventQuery")
        return True

    def destroy(self) -> None:
        if self._event is not None:
            event, self._event = self._event, None
            check(cudart().cudaEventDestroy(event), "cudaEventDestroy")


class GraphCapture:
    """Captures the work enqueued on a stream into a replayable CUDA graph.

    ``with GraphCapture(stream) as capture: enqueue(...)``; afterwards
    ``capture.graph`` launches it with :meth:`CudaGraph.launch`. Capture is
    thread-local: other threads' CUDA calls are not affected.
    """

    def __init__(self, stream: Stream):
        self.stream = stream
        self.graph: CudaGraph | None = None

    def __enter__(self) -> GraphCapture:
        rt = cudart()
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(rt.cudaStreamBeginCapture(self.stream.handle, mode), "cudaStreamBeginCapture")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        rt = cudart()
        # Always end the capture, or the stream stays unusable.
        err, graph = rt.cudaStreamEndCapture(self.stream.handle)
        if exc_type is not None:
            if err == rt.cudaError_t.cudaSuccess and graph is not None:
                try:
                    check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
                except CudaError:
                    pass  # the error that stopped the capture is the one to report
            return
        check((err,), "cudaStreamEndCapture")
        try:
            executable = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")  # the executable is independent of it
        self.graph = CudaGraph(executable)


class CudaGraph:
    """An instantiated CUDA graph (``cudaGraphExec_t``)."""

    def __init__(self, executable):
        self._exec = executable

    def launch(self, stream: Stream) -> None:
        check(cudart().cudaGraphLaunch(self._exec, stream.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        if self._exec is not None:
            executable, self._exec = self._exec, None
            check(cudart().cudaGraphExecDestroy(executable), "cudaGraphExecDestroy")


def release_all(resources) -> None:
    """Frees every resource (objects with ``free()`` or ``destroy()``) even if
    some fail, then raises the first failure. Order: as given."""
    first_error = None
    for resource in resources:
        if resource is None:
            continue
        try:
            (getattr(resource, "free", None) or resource.destroy)()
        except Exception as error:  # keep freeing the rest
            first_error = first_error or error
    if first_error is not None:
        raise first_error
