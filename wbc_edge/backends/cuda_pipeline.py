"""Double-buffered batches on the GPU: while the GPU works on batch k, the
host fills the pinned buffer of batch k+1.

A :class:`BatchPipeline` owns ``slots`` sets of {pinned input, pinned output,
device input, device output, stream, done-event}. A batch goes through

    batch = pipeline.reserve(n)       # a free slot; batch.inputs is its pinned input, (n, ...)
    fill(batch.inputs)                # e.g. preprocess_batch(images, out=batch.inputs)
    pipeline.submit(batch)            # H2D copy, launch(slot, n), D2H copy: all async on the slot's stream
    outputs = pipeline.collect(batch) # waits for that slot only; returns a copy and frees the slot

``launch(slot, n)`` enqueues the computation (for TensorRT: ``execute_async_v3``)
on ``slot.stream`` reading ``slot.device_input`` and writing ``slot.device_output``.
Slots are handed out under a lock, so several threads may run batches at once
(one slot, one stream, one execution context each).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import cuda


@dataclass(eq=False)
class Slot:
    """The buffers and stream of one batch in flight."""

    index: int
    stream: cuda.Stream
    host_input: cuda.PinnedBuffer
    host_output: cuda.PinnedBuffer
    device_input: cuda.DeviceBuffer
    device_output: cuda.DeviceBuffer
    done: cuda.Event
    #: per-slot resources of the launcher (TensorRT contexts, graphs...), freed by it
    extra: dict = field(default_factory=dict)


class Batch:
    """A reserved slot for ``count`` items. Fill ``inputs`` (pinned memory,
    valid until the batch is collected or released), then submit it."""

    __slots__ = ("count", "inputs", "owner", "slot", "state")

    def __init__(self, slot: Slot, count: int):
        self.slot = slot
        self.count = count
        self.inputs = slot.host_input.array[:count]
        self.state = "reserved"
        self.owner = threading.get_ident()


Launch = Callable[[Slot, int], None]


class BatchPipeline:
    def __init__(self, launch: Launch, *, max_batch: int, input_shape: tuple[int, ...], input_dtype,
                 output_shape: tuple[int, ...], output_dtype, slots: int = 2, device: int = 0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.launch = launch
        self.max_batch = int(max_batch)
        self.device = int(device)
        self._input_item = int(np.prod(input_shape, dtype=np.int64)) * np.dtype(input_dtype).itemsize
        self._output_item = int(np.prod(output_shape, dtype=np.int64)) * np.dtype(output_dtype).itemsize
        self._cond = threading.Condition()
        self._busy: dict[int, Batch] = {}
        self._threads = threading.local()
        self._closed = False
        self.slots: list[Slot] = []
        self._use_device()
        try:
            for index in range(slots):
                self.slots.append(self._make_slot(index, input_shape, input_dtype, output_shape, output_dtype))
        except BaseException:
            self._free_slots()
            raise

    def _make_slot(self, index, input_shape, input_dtype, output_shape, output_dtype) -> Slot:
        made = []

        def keep(resource):
            made.append(resource)
            return resource

        try:
            stream = keep(cuda.Stream())
            host_input = keep(cuda.PinnedBuffer((self.max_batch, *input_shape), input_dtype))
            host_output = keep(cuda.PinnedBuffer((self.max_batch, *output_shape), output_dtype))
            device_input = keep(cuda.DeviceBuffer(host_input.nbytes))
            device_output = keep(cuda.DeviceBuffer(host_output.nbytes))
            done = keep(cuda.Event())
        except BaseException:
            cuda.release_all(reversed(made))  # what was made before the failure
            raise
        return Slot(index, stream, host_input, host_output, device_input, device_output, done)

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    def _use_device(self) -> None:
        # The current device is per host thread in CUDA: set it once per thread.
        if getattr(self._threads, "device", None) != self.device:
            cuda.set_device(self.device)
            self._threads.device = self.device

    # --- one batch -----------------------------------------------------------

    def reserve(self, count: int, timeout: float | None = None) -> Batch:
        """A free slot for ``count`` items (1..max_batch); waits while all are
        busy in other threads. Raises instead of waiting forever when this
        thread itself holds every slot (collect one first)."""
        batch = self._reserve(count, block=True, timeout=timeout)
        assert batch is not None
        return batch

    def _reserve(self, count: int, block: bool, timeout: float | None = None) -> Batch | None:
        if not 1 <= count <= self.max_batch:
            raise ValueError(f"a batch holds 1 to {self.max_batch} items, got {count}")
        me = threading.get_ident()
        with self._cond:
            while True:
                self._check_open()
                free = [slot for slot in self.slots if slot.index not in self._busy]
                if free:
                    batch = Batch(free[0], count)
                    self._busy[batch.slot.index] = batch
                    return batch
                if not block:
                    return None
                if all(batch.owner == me for batch in self._busy.values()):
                    raise RuntimeError(f"all {self.num_slots} batch buffers are held by this thread: "
                                       "collect() or release() one before reserving another")
                if not self._cond.wait(timeout):
                    raise TimeoutError(f"no free batch buffer within {timeout} s")

    def submit(self, batch: Batch) -> None:
        """Enqueues copy in, ``launch``, copy out on the slot's stream; returns at once."""
        self._expect(batch, "reserved")
        self._use_device()
        slot, count = batch.slot, batch.count
        try:
            cuda.copy_to_device(slot.device_input, slot.host_input, count * self._input_item, slot.stream)
            self.launch(slot, count)
            cuda.copy_to_host(slot.host_output, slot.device_output, count * self._output_item, slot.stream)
            slot.done.record(slot.stream)
        except BaseException:
            self._abandon(batch)
            raise
        batch.state = "submitted"

    def collect(self, batch: Batch) -> np.ndarray:
        """Waits for the batch and returns its outputs (a copy); frees the slot."""
        self._expect(batch, "submitted")
        try:
            batch.slot.done.synchronize()
            outputs = batch.slot.host_output.array[:batch.count].copy()
        except BaseException:
            self._abandon(batch)
            raise
        self._free(batch)
        return outputs

    def release(self, batch: Batch) -> None:
        """Gives back a batch that will not be collected (waits if it was submitted)."""
        if batch.state == "free":
            return
        self._abandon(batch)

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """One synchronous batch: copies ``inputs`` into pinned memory and runs it."""
        batch = self.reserve(len(inputs))
        try:
            np.copyto(batch.inputs, inputs, casting="no")
        except BaseException:
            self.release(batch)
            raise
        self.submit(batch)
        return self.collect(batch)

    def map(self, jobs: Iterable[tuple[int, Callable[[np.ndarray], object]]]) -> Iterator[np.ndarray]:
        """For each ``(count, fill)``: ``fill(view)`` writes ``count`` inputs into
        pinned memory; yields the outputs in order. Filling batch k+1 overlaps
        the GPU work of batch k (up to ``num_slots`` batches in flight)."""
        pending: collections.deque[Batch] = collections.deque()
        try:
            for count, fill in jobs:
                # Never wait for a slot while holding one: two threads doing that would wait on each other.
                batch = self._reserve(count, block=False)
                while batch is None and pending:
                    yield self.collect(pending.popleft())
                    batch = self._reserve(count, block=False)
                if batch is None:
                    batch = self.reserve(count)
                try:
                    fill(batch.inputs)
                except BaseException:
                    self.release(batch)
                    raise
                self.submit(batch)
                pending.append(batch)
            while pending:
                yield self.collect(pending.popleft())
        finally:
            while pending:  # the consumer stopped early or a job failed
                self.release(pending.popleft())

    # --- bookkeeping -----------------------------------------------------------

    def _expect(self, batch: Batch, state: str) -> None:
        if batch.state != state or self._busy.get(batch.slot.index) is not batch:
            raise RuntimeError(f"batch is {batch.state}, expected {state}")
        self._check_open()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the pipeline is closed")

    def _free(self, batch: Batch) -> None:
        with self._cond:
            batch.state = "free"
            batch.inputs = None
            if self._busy.get(batch.slot.index) is batch:
                del self._busy[batch.slot.index]
            self._cond.notify()

    def _abandon(self, batch: Batch) -> None:
        # Work may still be queued on the stream: wait for it before the slot is reused.
        try:
            batch.slot.stream.synchronize()
        finally:
            self._free(batch)

    def synchronize(self) -> None:
        """Waits for every slot's stream."""
        for slot in self.slots:
            slot.stream.synchronize()

    def close(self) -> None:
        """Waits for queued work, then frees every buffer, event and stream."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._free_slots()

    def _free_slots(self) -> None:
        resources = []
        for slot in self.slots:
            resources += [_Synchronize(slot.stream), slot.done, slot.device_output, slot.device_input,
                          slot.host_output, slot.host_input, slot.stream]
        self.slots = []
        self._busy.clear()
        cuda.release_all(resources)


class _Synchronize:
    """Adapter so that release_all() waits for a stream before freeing its buffers."""

    def __init__(self, stream: cuda.Stream):
        self.stream = stream

    def destroy(self) -> None:
        if self.stream.handle:
            self.stream.synchronize()
