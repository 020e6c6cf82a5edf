"""Double-buffered batches on the GPU: while the GPU works on batch k, the
host fills the pinned buffer of batch k+1.

A :class:`BatchPipeline` owns ``slots`` sets of {pinned input, pinned output,
device input, device output, stream, done-event}. :meth:`BatchPipeline.map`
takes batch jobs (``job.count``, ``job.fill(out)``: see
:class:`wbc_edge.backends.base.BatchJob`) and, for each, in a free slot:

    rows = job.fill(slot's pinned input[:count])  # e.g. preprocess_batch(images, out=...)
    H2D copy, launch(slot, n), D2H copy, event      # all queued on the slot's stream
    ...                                             # the next job is filled meanwhile
    wait for the slot's event; yield (job, outputs) # a copy; the slot is free again

``launch(slot, n)`` enqueues the computation (for TensorRT: ``execute_async_v3``)
on ``slot.stream`` reading ``slot.device_input`` and writing ``slot.device_output``.
Only the rows ``fill`` returned are run and copied back; a batch smaller than
``min_batch`` (an engine's smallest profile shape) is padded with zero images
whose outputs are dropped.

Several threads may map jobs through one pipeline at once (one slot, one
stream each): the rule that keeps them from waiting on each other forever is
written once, in :meth:`BatchPipeline._acquire`. :meth:`BatchPipeline.close`
waits for the calls in progress in other threads, then for the GPU, then frees
everything.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from . import cuda


class Job(Protocol):
    """What :meth:`BatchPipeline.map` needs of a job (base.BatchJob has it)."""

    count: int

    def fill(self, out: np.ndarray | None) -> np.ndarray | None: ...


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
    """A slot reserved by one thread, ``inputs`` its host memory for the rows."""

    __slots__ = ("count", "inputs", "owner", "rows", "slot", "state")

    def __init__(self, slot, inputs: np.ndarray):
        self.slot = slot
        self.inputs = inputs
        self.count = 0   # real rows, copied back
        self.rows = 0    # rows run (count, or padded up to min_batch)
        self.state = "reserved"
        self.owner = threading.get_ident()


Launch = Callable[[Slot, int], None]


class SlotPipeline:
    """The scheduling of batch jobs over a fixed set of slots (streams with
    their buffers), for any GPU library: jobs in, ``(job, outputs)`` out, in
    order, slots handed out under one lock. Subclasses say how a slot's host
    memory is found and how a batch is started, waited for and read back."""

    def __init__(self, *, max_batch: int | None, min_batch: int = 1):
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not 1 <= min_batch <= (max_batch or min_batch):
            raise ValueError(f"min_batch must be 1..{max_batch}, got {min_batch}")
        self.max_batch, self.min_batch = max_batch, int(min_batch)
        self._cond = threading.Condition()
        self._busy: dict[int, Batch] = {}
        self._active = 0  # threads inside a submit or collect: close() waits for them
        self._closed = False
        self.slots: list = []

    # --- what a subclass provides ----------------------------------------------

    def _inputs(self, slot, capacity: int) -> np.ndarray:
        """The slot's host memory for ``capacity`` input rows."""
        raise NotImplementedError

    def _start(self, batch: Batch) -> None:
        """Queues the batch's work (``batch.rows`` in, ``batch.count`` out) on its slot's stream."""
        raise NotImplementedError

    def _wait(self, batch: Batch) -> np.ndarray:
        """Waits for the batch's work; its outputs (a copy)."""
        raise NotImplementedError

    def _drain(self, slot) -> None:
        """Waits for everything queued on the slot's stream."""
        raise NotImplementedError

    def _free_slots(self) -> None:
        """Frees the slots' resources (after stop())."""
        self.slots = []

    # --- running ---------------------------------------------------------------

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    # --- jobs ---------------------------------------------------------------

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[Job, np.ndarray | None]]:
        """Each job with its output rows (a copy; None when ``fill`` gave no
        rows or the job has count 0), in job order. Filling batch k+1 overlaps
        the GPU work of batch k (up to ``num_slots`` batches in flight). If a
        job fails, or the consumer stops early, every slot this call holds is
        given back (after the GPU is done with it) before the error surfaces."""
        pending: collections.deque[tuple[Job, Batch | None]] = collections.deque()
        try:
            for job in jobs:
                count = int(job.count)
                if count < 0 or (self.max_batch is not None and count > self.max_batch):
                    raise ValueError(f"a batch job holds 0 to {self.max_batch} items, got {count}")
                batch = None
                if count:
                    batch = yield from self._acquire(max(count, self.min_batch), pending)
                    batch = self._fill_and_submit(job, count, batch)
                pending.append((job, batch))
                while pending and pending[0][1] is None:  # nothing to wait for: answered at once, in order
                    yield pending.popleft()
            while pending:
                yield self._answer(pending.popleft())
        finally:
            while pending:  # the consumer stopped early or a job failed
                batch = pending.popleft()[1]
                if batch is not None:
                    try:
                        self._release(batch)
                    except Exception:
                        pass  # the error that stopped the run is the one to report

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """One batch of at most ``max_batch`` items, copied into pinned memory and run."""

        class _Copy:
            count = len(inputs)

            @staticmethod
            def fill(out):
                np.copyto(out, inputs, casting="no")
                return out

        [(_, outputs)] = self.map([_Copy()])
        return outputs

    def _acquire(self, capacity: int, pending: collections.deque) -> Iterator[tuple[Job, np.ndarray | None]]:
        """A free slot (returned by ``yield from``), yielding this thread's own
        finished batches while there is none.

        The one rule that keeps threads sharing the pipeline from waiting on
        each other forever: never wait for a slot while holding one. While this
        thread holds batches it collects its oldest instead of waiting; only
        when it holds none does it wait (for slots that other threads, following
        the same rule, will give back)."""
        while True:
            holding = any(batch is not None for _, batch in pending)
            batch = self._reserve(capacity, block=not holding)
            if batch is not None:
                return batch
            yield self._answer(pending.popleft())

    def _fill_and_submit(self, job: Job, count: int, batch: Batch) -> Batch | None:
        """Fills the batch's pinned input through ``job.fill`` and starts it; None
        (the slot given back) when fill gives no rows."""
        try:
            rows = job.fill(batch.inputs[:count])
            n = 0 if rows is None else len(rows)
            if not n:
                self._release(batch)
                return None
            if n > count:
                raise ValueError(f"a batch job's fill returned {n} rows, more than its count {count}")
            if not _is_start_of(rows, batch.inputs):  # filled elsewhere: into the pinned buffer now
                np.copyto(batch.inputs[:n], rows, casting="no")
            run = max(n, self.min_batch)
            if run > n:  # below the engine's smallest batch: padded with zero images, their outputs dropped
                batch.inputs[n:run] = 0
            self._submit(batch, n, run)
        except BaseException:
            self._release(batch)
            raise
        return batch

    def _answer(self, entry: tuple[Job, Batch | None]) -> tuple[Job, np.ndarray | None]:
        job, batch = entry
        return job, None if batch is None else self._collect(batch)

    # --- one batch -------------------------------------------------------------

    def _reserve(self, capacity: int, block: bool) -> Batch | None:
        """A free slot; None when there is none and ``block`` is False. Raises
        instead of waiting forever when this thread itself holds every slot."""
        me = threading.get_ident()
        with self._cond:
            while True:
                self._check_open()
                free = [slot for slot in self.slots if slot.index not in self._busy]
                if free:
                    slot = free[0]
                    self._busy[slot.index] = None  # taken; its memory is found outside the lock
                    break
                if not block:
                    return None
                if all(batch is None or batch.owner == me for batch in self._busy.values()):
                    raise RuntimeError(f"all {self.num_slots} batch buffers are held by this thread (a batch "
                                       "run not finished): finish or close it before starting another")
                self._cond.wait()
        try:
            batch = Batch(slot, self._inputs(slot, capacity))
        except BaseException:
            with self._cond:
                del self._busy[slot.index]
                self._cond.notify_all()
            raise
        with self._cond:
            self._busy[slot.index] = batch
        return batch

    def _submit(self, batch: Batch, count: int, rows: int) -> None:
        with self._working(batch, "reserved"):
            batch.count, batch.rows = count, rows
            batch.state = "submitted"  # from here on, work may be queued: giving it back waits for it
            self._start(batch)

    def _collect(self, batch: Batch) -> np.ndarray:
        """Waits for the batch and returns its outputs (a copy); the slot is
        free afterwards, whatever happens."""
        try:
            with self._working(batch, "submitted"):
                outputs = self._wait(batch)
        except BaseException:
            self._release(batch)
            raise
        self._free(batch)
        return outputs

    def _release(self, batch: Batch) -> None:
        """Gives a slot back, after the work queued on its stream (if any) is done."""
        if batch.state == "submitted":
            try:
                self._drain(batch.slot)
            finally:
                self._free(batch)
        elif batch.state == "reserved":
            self._free(batch)

    # --- bookkeeping -----------------------------------------------------------

    class _Section:
        def __init__(self, pipeline: SlotPipeline):
            self.pipeline = pipeline

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            with self.pipeline._cond:
                self.pipeline._active -= 1
                self.pipeline._cond.notify_all()

    def _working(self, batch: Batch, state: str) -> _Section:
        """Enters a submit or collect (counted: close() waits for it to end)."""
        with self._cond:
            self._check_open()
            if batch.state != state or self._busy.get(batch.slot.index) is not batch:
                raise RuntimeError(f"batch is {batch.state}, expected {state}")
            self._active += 1
        return self._Section(self)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the pipeline is closed")

    def _free(self, batch: Batch) -> None:
        with self._cond:
            if self._busy.get(batch.slot.index) is batch:
                del self._busy[batch.slot.index]
            batch.state = "free"
            batch.inputs = None
            self._cond.notify_all()

    def stop(self) -> None:
        """Refuses new batches, waits for the submits and collects in progress
        in other threads, then for the GPU. Batches still held (a run that was
        not finished) are given up. Idempotent; close() frees the resources."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # threads waiting for a slot: the pipeline is closed
            while self._active:
                self._cond.wait()
            for batch in self._busy.values():
                if batch is not None:
                    batch.state, batch.inputs = "closed", None
            self._busy.clear()
        for slot in self.slots:
            self._drain(slot)

    def close(self) -> None:
        """stop(), then frees every buffer, event and stream (on the pipeline's
        device, whichever thread calls it). Idempotent."""
        try:
            self.stop()
        finally:
            self._free_slots()


class BatchPipeline(SlotPipeline):
    """Slots of cuda-python memory and streams; ``launch(slot, n)`` enqueues the computation."""

    def __init__(self, launch: Launch, *, max_batch: int, input_shape: tuple[int, ...], input_dtype,
                 output_shape: tuple[int, ...], output_dtype, slots: int = 2, device: int = 0, min_batch: int = 1):
        super().__init__(max_batch=int(max_batch), min_batch=min_batch)
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.launch = launch
        self.device = int(device)
        self._input_item = int(np.prod(input_shape, dtype=np.int64)) * np.dtype(input_dtype).itemsize
        self._output_item = int(np.prod(output_shape, dtype=np.int64)) * np.dtype(output_dtype).itemsize
        cuda.set_device(self.device)
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

    def _inputs(self, slot: Slot, capacity: int) -> np.ndarray:
        return slot.host_input.array[:capacity]

    def _start(self, batch: Batch) -> None:
        """Copy in, ``launch``, copy out and the event, queued on the slot's stream."""
        cuda.set_device(self.device)  # CUDA's current device is per thread
        slot = batch.slot
        cuda.copy_to_device(slot.device_input, slot.host_input, batch.rows * self._input_item, slot.stream)
        self.launch(slot, batch.rows)
        cuda.copy_to_host(slot.host_output, slot.device_output, batch.count * self._output_item, slot.stream)
        slot.done.record(slot.stream)

    def _wait(self, batch: Batch) -> np.ndarray:
        batch.slot.done.synchronize()
        return batch.slot.host_output.array[:batch.count].copy()

    def _drain(self, slot: Slot) -> None:
        cuda.set_device(self.device)
        slot.stream.synchronize()

    def synchronize(self) -> None:
        """Waits for every slot's stream."""
        for slot in self.slots:
            self._drain(slot)

    def _free_slots(self) -> None:
        resources = []
        for slot in self.slots:
            resources += [_Synchronize(slot.stream), slot.done, slot.device_output, slot.device_input,
                          slot.host_output, slot.host_input, slot.stream]
        self.slots = []
        if resources:
            cuda.set_device(self.device)
            cuda.release_all(resources)


def _is_start_of(rows: np.ndarray, buffer: np.ndarray) -> bool:
    """Whether ``rows`` is ``buffer[:len(rows)]`` itself (filled in place)."""
    return (isinstance(rows, np.ndarray) and rows.dtype == buffer.dtype and rows.shape[1:] == buffer.shape[1:]
            and rows.flags.c_contiguous
            and rows.__array_interface__["data"][0] == buffer.__array_interface__["data"][0])


class _Synchronize:
    """Adapter so that release_all() waits for a stream before freeing its buffers."""

    def __init__(self, stream: cuda.Stream):
        self.stream = stream

    def destroy(self) -> None:
        if self.stream.handle:
            self.stream.synchronize()
