"""A stand-in for the parts of ``cuda.bindings.runtime`` that wbc_edge's CUDA
code calls, so that the real BatchPipeline and TensorRT runner logic run (and
are checked) on machines without a GPU.

Same function names, parameters and ``(err, *values)`` returns as cuda-python
(tests/backends/test_cuda_pipeline.py compares them with the real module where
it is installed). What it adds:

- **Asynchrony that bites**: work queued on a stream (copies, kernels, event
  records, graph launches) does not run when enqueued. It runs when the stream
  or an event on it is synchronized, or when a test calls :meth:`FakeCudart.run`
  (``progress="eager"`` runs it at once; ``"random"`` runs a random part of the
  queues at every call, for varied interleavings).
- **Hazards detected**: a host buffer changed after a copy from it was queued
  and before the copy ran; memory freed while queued work still uses it; a
  stream, event or buffer used while the thread's current device is another
  one; work on the legacy default stream. Each is appended to ``hazards``
  (``strict=True``: raised at once as :class:`Hazard`). The destination of a
  device-to-host copy is filled with 0xFF until the copy runs, so results read
  too early are NaN.
- **Counting**: ``live()`` counts allocations, streams, events and graphs not
  yet freed; ``calls`` records every call ``(name, args, thread id)``.
- **Failures on demand**: ``fail("cudaMemcpyAsync", code, after=2)`` makes the
  third call return ``code``; a kernel that raises :class:`KernelFault` makes
  the next synchronize of its stream (or of an event recorded after it) return
  the fault's code, as CUDA reports asynchronous errors.

Install with the ``fake_cudart`` fixture (tests/backends/conftest.py), which
puts it where ``wbc_edge.backends.cuda`` imports the runtime from.
"""

from __future__ import annotations

import collections
import ctypes
import enum
import functools
import inspect
import itertools
import random
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInitializationError = 3
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorNotReady = 600
    cudaErrorIllegalAddress = 700
    cudaErrorLaunchFailure = 719
    cudaErrorSystemDriverMismatch = 803
    cudaErrorCompatNotSupportedOnDevice = 804
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


_ERROR_TEXT = {
    cudaError_t.cudaSuccess: "no error",
    cudaError_t.cudaErrorInvalidValue: "invalid argument",
    cudaError_t.cudaErrorMemoryAllocation: "out of memory",
    cudaError_t.cudaErrorInsufficientDriver: "CUDA driver version is insufficient for CUDA runtime version",
    cudaError_t.cudaErrorNoDevice: "no CUDA-capable device is detected",
    cudaError_t.cudaErrorInvalidDevice: "invalid device ordinal",
    cudaError_t.cudaErrorInvalidResourceHandle: "invalid resource handle",
    cudaError_t.cudaErrorNotReady: "device not ready",
    cudaError_t.cudaErrorIllegalAddress: "an illegal memory access was encountered",
    cudaError_t.cudaErrorLaunchFailure: "unspecified launch failure",
    cudaError_t.cudaErrorStreamCaptureUnsupported: "operation not permitted when stream is capturing",
    cudaError_t.cudaErrorStreamCaptureInvalidated: "operation failed due to a previous error during capture",
}

#: values each function returns after the error code (cuda-python's own counts)
_RETURNS = {
    "cudaGetDeviceCount": 1, "cudaDriverGetVersion": 1, "cudaRuntimeGetVersion": 1, "cudaGetDeviceProperties": 1,
    "cudaMemGetInfo": 2, "cudaMallocHost": 1, "cudaMalloc": 1, "cudaStreamCreateWithFlags": 1,
    "cudaEventCreateWithFlags": 1, "cudaStreamEndCapture": 1, "cudaGraphInstantiate": 1, "cudaGetErrorName": 1,
    "cudaGetErrorString": 1, "cudaGetDevice": 1,
}


class Hazard(AssertionError):
    """Something that would corrupt data or crash on a real GPU."""


class KernelFault(Exception):
    """Raised by a kernel function: the error CUDA reports at the next synchronize."""

    def __init__(self, code: cudaError_t = cudaError_t.cudaErrorIllegalAddress):
        super().__init__(code.name)
        self.code = code


class _Handle:
    """An opaque CUDA handle (cudaStream_t, cudaEvent_t...): int() gives its address."""

    def __init__(self, kind: str, value: int):
        self.kind, self._value = kind, value

    def __int__(self) -> int:
        return self._value

    def getPtr(self) -> int:
        return self._value

    def __repr__(self) -> str:
        return f"<{self.kind} {self._value:#x}>"


class cudaStream_t(_Handle):
    pass


class cudaEvent_t(_Handle):
    pass


class cudaGraph_t(_Handle):
    pass


class cudaGraphExec_t(_Handle):
    pass


@dataclass
class cudaDeviceProp:
    name: bytes = b"Fake GPU"
    major: int = 8
    minor: int = 9
    totalGlobalMem: int = 24 << 30


@dataclass(eq=False)
class Allocation:
    kind: str            # "host" (pinned) or "device"
    ptr: int
    nbytes: int
    device: int
    data: np.ndarray     # the bytes (for host memory: the very memory the pointer addresses)
    keep: object = None  # what keeps host memory alive
    live: bool = True


@dataclass(eq=False)
class Op:
    """One piece of work queued on a stream."""

    what: str
    run: Callable[[], None]
    uses: tuple = ()           # allocations it reads or writes
    source: tuple | None = None  # (allocation, offset, nbytes, snapshot) of a host-to-device copy
    seq: int = 0


@dataclass(eq=False)
class StreamState:
    handle: int
    device: int
    flags: int
    queue: collections.deque = field(default_factory=collections.deque)
    done_seq: int = 0          # every op with seq <= done_seq has run
    last_seq: int = 0
    error: cudaError_t | None = None
    error_seq: int = 0         # the op that failed
    capture: list | None = None
    capture_broken: bool = False
    live: bool = True


@dataclass(eq=False)
class EventState:
    handle: int
    device: int
    flags: int
    stream: StreamState | None = None
    seq: int = 0               # recorded after this op of ``stream``
    live: bool = True


def _api(function):
    """A runtime function: under the stand-in's lock, recorded, failing on
    demand (``fail``), and an unknown or freed handle answered as CUDA does
    (cudaErrorInvalidResourceHandle), as a hazard too."""
    name = function.__name__
    manual = "injected" in inspect.signature(function).parameters

    @functools.wraps(function)
    def call(self, *args):
        with self._lock:
            injected = self._enter(name, *args)
            try:
                if manual:
                    return function(self, *args, injected=injected)
                if injected is not None:
                    return self._error(name, injected)
                return function(self, *args)
            except KeyError as error:
                self._hazard(f"{name}: {error.args[0]}")
                return self._error(name, cudaError_t.cudaErrorInvalidResourceHandle)

    if manual:  # the signature callers see: without the stand-in's own parameter
        signature = inspect.signature(function)
        call.__signature__ = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name != "injected"])
    return call


class FakeCudart:
    """The module-like stand-in: use its attributes as ``cuda.bindings.runtime``'s."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStream_t = cudaStream_t
    cudaEvent_t = cudaEvent_t
    cudaDeviceProp = cudaDeviceProp
    cudaStreamDefault = 0
    cudaStreamNonBlocking = 1
    cudaEventDefault = 0
    cudaEventBlockingSync = 1
    cudaEventDisableTiming = 2

    def __init__(self, *, devices: int = 2, driver_version: int = 13000, runtime_version: int = 13050,
                 progress: str = "lazy", strict: bool = False, seed: int = 0, total_memory: int = 24 << 30):
        if progress not in ("lazy", "eager", "random"):
            raise ValueError(f"progress must be lazy, eager or random, got {progress!r}")
        self.devices, self.driver_version, self.runtime_version = devices, driver_version, runtime_version
        self.progress, self.strict = progress, strict
        self.total_memory = total_memory
        self.calls: list[tuple[str, tuple, int]] = []
        self.hazards: list[str] = []
        self._lock = threading.RLock()
        self._random = random.Random(seed)
        self._thread = threading.local()
        self._handles = itertools.count(0x1000, 0x10)
        self._device_addresses = itertools.count(0x7F00_0000_0000, 1 << 32)
        self._seq = itertools.count(1)
        self.allocations: dict[int, Allocation] = {}
        self.streams: dict[int, StreamState] = {}
        self.events: dict[int, EventState] = {}
        self.graphs: dict[int, list] = {}
        self.graph_execs: dict[int, list] = {}
        self._failures: dict[str, list] = collections.defaultdict(list)

    # --- test controls ---------------------------------------------------------

    def live(self) -> dict[str, int]:
        """What has been created and not yet freed, by kind."""
        with self._lock:
            counts = collections.Counter(a.kind for a in self.allocations.values() if a.live)
            counts["stream"] = sum(s.live for s in self.streams.values())
            counts["event"] = sum(e.live for e in self.events.values())
            counts["graph"] = len(self.graphs)
            counts["graph_exec"] = len(self.graph_execs)
            return {kind: n for kind, n in counts.items() if n}

    def fail(self, name: str, code: cudaError_t, *, after: int = 0, times: int = 1) -> None:
        """The ``after``-th next call of ``name`` (0: the next) and ``times - 1``
        more return ``code`` instead of doing anything."""
        self._failures[name].append([after, times, code])

    def run(self, stream=None, limit: int | None = None) -> int:
        """Runs queued work: of one stream or all, at most ``limit`` ops each. Returns how many ran."""
        with self._lock:
            states = [self._stream(stream)] if stream is not None else list(self.streams.values())
            return sum(self._drain(state, limit=limit) for state in states)

    def pending(self) -> int:
        with self._lock:
            return sum(len(s.queue) for s in self.streams.values())

    def device_bytes(self, ptr: int, nbytes: int) -> np.ndarray:
        """The bytes at a device address, for kernels to read and write."""
        allocation, offset = self._find(ptr, nbytes, "device")
        return allocation.data[offset:offset + nbytes]

    def launch(self, stream, kernel: Callable[[], None], *, what: str = "kernel", uses=()) -> None:
        """Queues ``kernel()`` on ``stream`` (what a TensorRT enqueue or a graph does).
        ``uses``: device pointers it touches (checked against frees)."""
        with self._lock:
            state = self._stream(stream)
            allocations = tuple(self._find(int(p), 1, "device")[0] for p in uses)
            self._enqueue(state, Op(what, kernel, allocations))

    def current_device(self) -> int:
        return getattr(self._thread, "device", 0)

    # --- bookkeeping -------------------------------------------------------------

    def _hazard(self, text: str) -> None:
        self.hazards.append(text)
        if self.strict:
            raise Hazard(text)

    def _enter(self, name: str, *args):
        """Records the call; returns an injected error code, or None."""
        self.calls.append((name, args, threading.get_ident()))
        if self.progress == "random":
            for state in list(self.streams.values()):
                if state.queue and state.capture is None:
                    self._drain(state, limit=self._random.randint(0, len(state.queue)))
        plans = self._failures.get(name)
        if plans:
            plan = plans[0]
            if plan[0] > 0:
                plan[0] -= 1
            else:
                plan[1] -= 1
                if plan[1] <= 0:
                    plans.pop(0)
                return plan[2]
        return None

    def _error(self, name: str, code):
        return (code, *([None] * _RETURNS.get(name, 0)))

    def _stream(self, stream) -> StreamState:
        handle = int(stream) if stream is not None else 0
        if handle == 0:
            self._hazard("work on the legacy default stream (use a non-blocking stream)")
            return self._default_stream()
        state = self.streams.get(handle)
        if state is None or not state.live:
            raise KeyError(f"no live stream {handle:#x}")
        return state

    def _default_stream(self) -> StreamState:
        if 0 not in self.streams:
            self.streams[0] = StreamState(0, 0, 0, live=False)
        return self.streams[0]

    def _check_device(self, what: str, device: int) -> None:
        if device != self.current_device():
            self._hazard(f"{what} of device {device} used while the thread's current device is "
                         f"{self.current_device()}")

    def _find(self, ptr: int, nbytes: int, kind: str | None = None) -> tuple[Allocation, int]:
        for allocation in self.allocations.values():
            if allocation.live and allocation.ptr <= ptr and ptr + nbytes <= allocation.ptr + allocation.nbytes:
                if kind is not None and allocation.kind != kind:
                    break
                return allocation, ptr - allocation.ptr
        raise KeyError(f"{nbytes} bytes at {ptr:#x} are not in a live {kind or ''} allocation")

    def _enqueue(self, state: StreamState, op: Op) -> None:
        if state.capture is not None:
            state.capture.append(op)
            return
        op.seq = state.last_seq = next(self._seq)
        state.queue.append(op)
        if self.progress == "eager" or state.handle == 0:
            self._drain(state)

    def _drain(self, state: StreamState, upto: int | None = None, limit: int | None = None) -> int:
        ran = 0
        while state.queue and (upto is None or state.queue[0].seq <= upto) and (limit is None or ran < limit):
            op = state.queue.popleft()
            ran += 1
            if op.source is not None:
                allocation, offset, nbytes, snapshot = op.source
                if not np.array_equal(allocation.data[offset:offset + nbytes], snapshot):
                    self._hazard(f"{op.what}: host memory at {allocation.ptr + offset:#x} was overwritten after "
                                 "the copy from it was queued and before it ran")
            try:
                op.run()
            except KernelFault as fault:
                if state.error is None:
                    state.error, state.error_seq = fault.code, op.seq
            state.done_seq = op.seq
        return ran

    def _take_error(self, state: StreamState, upto: int) -> cudaError_t:
        if state.error is not None and state.error_seq <= upto:
            error, state.error = state.error, None
            return error
        return cudaError_t.cudaSuccess

    def _release(self, allocation: Allocation) -> None:
        for state in self.streams.values():
            if any(allocation in op.uses for op in state.queue):
                self._hazard(f"{allocation.kind} memory at {allocation.ptr:#x} freed while queued work uses it")
        allocation.live = False
        allocation.data[...] = 0xEE  # what freed memory holds: not the old contents
        del self.allocations[allocation.ptr]

    # --- devices -------------------------------------------------------------------

    @_api
    def cudaGetDeviceCount(self):
        if not self.driver_version:  # what cuda-python says with no driver at all
            return cudaError_t.cudaErrorInsufficientDriver, 0
        if self.driver_version // 1000 < self.runtime_version // 1000:
            return cudaError_t.cudaErrorInsufficientDriver, 0
        if not self.devices:
            return cudaError_t.cudaErrorNoDevice, 0
        return cudaError_t.cudaSuccess, self.devices

    @_api
    def cudaDriverGetVersion(self):
        return cudaError_t.cudaSuccess, self.driver_version

    @_api
    def cudaRuntimeGetVersion(self):
        return cudaError_t.cudaSuccess, self.runtime_version

    @_api
    def cudaGetDeviceProperties(self, device):
        if not 0 <= int(device) < self.devices:
            return cudaError_t.cudaErrorInvalidDevice, None
        return cudaError_t.cudaSuccess, cudaDeviceProp(totalGlobalMem=self.total_memory)

    @_api
    def cudaSetDevice(self, device):
        if not self.driver_version:
            return (cudaError_t.cudaErrorInsufficientDriver,)
        if not 0 <= int(device) < self.devices:
            return (cudaError_t.cudaErrorInvalidDevice,)
        self._thread.device = int(device)
        return (cudaError_t.cudaSuccess,)

    @_api
    def cudaGetDevice(self):
        return cudaError_t.cudaSuccess, self.current_device()

    @_api
    def cudaMemGetInfo(self):
        used = sum(a.nbytes for a in self.allocations.values() if a.kind == "device")
        return cudaError_t.cudaSuccess, self.total_memory - used, self.total_memory

    def cudaGetErrorName(self, error):
        code = cudaError_t(int(error))
        return cudaError_t.cudaSuccess, code.name.encode()

    def cudaGetErrorString(self, error):
        code = cudaError_t(int(error))
        return cudaError_t.cudaSuccess, _ERROR_TEXT.get(code, "unknown error").encode()

    # --- memory ------------------------------------------------------------------------

    @_api
    def cudaMallocHost(self, size):
        if int(size) <= 0:
            return cudaError_t.cudaErrorInvalidValue, None
        memory = ctypes.create_string_buffer(int(size))
        ptr = ctypes.addressof(memory)
        data = np.frombuffer(memory, np.uint8)
        self.allocations[ptr] = Allocation("host", ptr, int(size), self.current_device(), data, keep=memory)
        return cudaError_t.cudaSuccess, ptr

    @_api
    def cudaFreeHost(self, ptr):
        allocation = self.allocations.get(int(ptr))
        if allocation is None or allocation.kind != "host":
            return (cudaError_t.cudaErrorInvalidValue,)
        self._release(allocation)
        return (cudaError_t.cudaSuccess,)

    @_api
    def cudaMalloc(self, size):
        if int(size) <= 0:
            return cudaError_t.cudaErrorInvalidValue, None
        ptr = next(self._device_addresses)
        self.allocations[ptr] = Allocation("device", ptr, int(size), self.current_device(),
                                           np.full(int(size), 0xCD, np.uint8))
        return cudaError_t.cudaSuccess, ptr

    @_api
    def cudaFree(self, devPtr):
        allocation = self.allocations.get(int(devPtr))
        if allocation is None or allocation.kind != "device":
            return (cudaError_t.cudaErrorInvalidValue,)
        self._release(allocation)
        return (cudaError_t.cudaSuccess,)

    @_api
    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        kind, count = cudaMemcpyKind(int(kind)), int(count)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            kinds = ("device", "host")
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            kinds = ("host", "device")
        else:
            return (cudaError_t.cudaErrorInvalidValue,)
        try:
            (target, t_off), (origin, o_off) = self._find(int(dst), count, kinds[0]), \
                self._find(int(src), count, kinds[1])
            state = self._stream(stream)
        except KeyError as error:
            self._hazard(f"cudaMemcpyAsync: {error.args[0]}")
            return (cudaError_t.cudaErrorInvalidValue,)
        self._check_device("a stream", state.device)

        def copy():
            target.data[t_off:t_off + count] = origin.data[o_off:o_off + count]

        op = Op(f"cudaMemcpyAsync({kind.name})", copy, (target, origin))
        if origin.kind == "host":
            op.source = (origin, o_off, count, origin.data[o_off:o_off + count].copy())
        else:
            target.data[t_off:t_off + count] = 0xFF  # undefined until the copy runs
        self._enqueue(state, op)
        return (cudaError_t.cudaSuccess,)

    # --- streams and events ------------------------------------------------------------

    @_api
    def cudaStreamCreateWithFlags(self, flags):
        handle = next(self._handles)
        self.streams[handle] = StreamState(handle, self.current_device(), int(flags))
        return cudaError_t.cudaSuccess, cudaStream_t("cudaStream_t", handle)

    @_api
    def cudaStreamSynchronize(self, stream):
        state = self._stream(stream)
        if state.capture is not None:
            state.capture_broken = True
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        self._drain(state)
        return (self._take_error(state, state.done_seq),)

    @_api
    def cudaStreamDestroy(self, stream):
        state = self._stream(stream)
        self._check_device("a stream", state.device)
        self._drain(state)  # CUDA finishes queued work before releasing the stream
        state.live = False
        return (cudaError_t.cudaSuccess,)

    @_api
    def cudaEventCreateWithFlags(self, flags):
        handle = next(self._handles)
        self.events[handle] = EventState(handle, self.current_device(), int(flags))
        return cudaError_t.cudaSuccess, cudaEvent_t("cudaEvent_t", handle)

    def _event(self, event) -> EventState:
        state = self.events.get(int(event))
        if state is None or not state.live:
            raise KeyError(f"no live event {int(event):#x}")
        return state

    @_api
    def cudaEventRecord(self, event, stream):
        state, where = self._event(event), self._stream(stream)
        self._check_device("an event", state.device)
        state.stream, state.seq = where, where.last_seq
        return (cudaError_t.cudaSuccess,)

    @_api
    def cudaEventSynchronize(self, event):
        state = self._event(event)
        if state.stream is None:
            return (cudaError_t.cudaSuccess,)
        self._drain(state.stream, upto=state.seq)
        return (self._take_error(state.stream, state.seq),)

    @_api
    def cudaEventQuery(self, event):
        state = self._event(event)
        if state.stream is None or state.stream.done_seq >= state.seq:
            return (self._take_error(state.stream, state.seq) if state.stream else cudaError_t.cudaSuccess,)
        return (cudaError_t.cudaErrorNotReady,)

    @_api
    def cudaEventDestroy(self, event):
        self._event(event).live = False
        return (cudaError_t.cudaSuccess,)

    # --- graphs ---------------------------------------------------------------------------

    @_api
    def cudaStreamBeginCapture(self, stream, mode):
        state = self._stream(stream)
        if state.capture is not None:
            return (cudaError_t.cudaErrorIllegalState,)
        state.capture, state.capture_broken = [], False
        return (cudaError_t.cudaSuccess,)

    @_api
    def cudaStreamEndCapture(self, stream, injected=None):
        # the capture ends even when the call fails, as in CUDA
        state = self._stream(stream)
        ops, state.capture = state.capture, None
        if ops is None:
            return cudaError_t.cudaErrorIllegalState, None
        if injected is not None or state.capture_broken:
            return injected or cudaError_t.cudaErrorStreamCaptureInvalidated, None
        handle = next(self._handles)
        self.graphs[handle] = ops
        return cudaError_t.cudaSuccess, cudaGraph_t("cudaGraph_t", handle)

    @_api
    def cudaGraphInstantiate(self, graph, flags):
        handle = next(self._handles)
        self.graph_execs[handle] = list(self.graphs[int(graph)])
        return cudaError_t.cudaSuccess, cudaGraphExec_t("cudaGraphExec_t", handle)

    @_api
    def cudaGraphLaunch(self, graphExec, stream):
        state = self._stream(stream)
        for op in self.graph_execs[int(graphExec)]:
            self._enqueue(state, Op(f"graph: {op.what}", op.run, op.uses))
        return (cudaError_t.cudaSuccess,)

    @_api
    def cudaGraphDestroy(self, graph):
        return (cudaError_t.cudaSuccess if self.graphs.pop(int(graph), None) is not None
                else cudaError_t.cudaErrorInvalidValue,)

    @_api
    def cudaGraphExecDestroy(self, graphExec):
        return (cudaError_t.cudaSuccess if self.graph_execs.pop(int(graphExec), None) is not None
                else cudaError_t.cudaErrorInvalidValue,)


#: the runtime functions the stand-in provides (checked against cuda-python's)
FUNCTIONS = sorted(name for name in vars(FakeCudart) if name.startswith("cuda") and callable(getattr(FakeCudart, name))
                   and not isinstance(getattr(FakeCudart, name), type))
