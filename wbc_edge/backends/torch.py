"""PyTorch backend: the reference for parity tests, and a GPU path where
TensorRT is absent. Runs a wbc-edge checkpoint through the same deployed input
path as the exported graph (uint8 NHWC in, normalization inside).

On CUDA it is built for throughput: FP16 weights and activations (by default),
channels-last memory (the NHWC uint8 input already is), cuDNN autotuning, and
``streams`` slots of {CUDA stream, pinned input, pinned output}. Besides
``infer``, a CUDA runner offers the reserve/submit/collect protocol of the
TensorRT runner (which ``Classifier`` uses when a runner has it)::

    batch = runner.reserve(n)            # a free slot; batch.inputs: pinned uint8 (n, H, W, 3)
    preprocess_batch(images, size, out=batch.inputs)
    runner.submit(batch)                 # upload, forward, download: queued on the slot's stream
    ...                                  # preprocess the next batch meanwhile
    logits = runner.collect(batch)       # waits for this batch only (the GIL released)

so the host prepares batch k+1 while the GPU runs batch k, and several threads
may run batches at once, one slot each.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import numpy as np

from ..errors import WbcEdgeError, require
from .base import Runner

INSTALL = "pip install 'wbc-edge[torch]'  (PyTorch CPU: torch==2.13.0)"

#: Batches a CUDA runner keeps in flight (each has a stream and pinned buffers).
DEFAULT_STREAMS = 2


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", half: bool | None = None,
                 channels_last: bool = True, *, streams: int = DEFAULT_STREAMS, cudnn_benchmark: bool = True):
        """
        Args:
            path: a wbc-edge checkpoint (``.pt``, loaded with weights_only=True)
                or an FP32 ONNX from ``wbc-edge export`` (its weights read back
                from the graph: ``wbc_edge.training.from_onnx``).
            device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            half: run in FP16; default: on CUDA yes, on the CPU no (CPUs
                emulate FP16 slowly).
            channels_last: NHWC memory layout for the convolutions (tensor
                cores; oneDNN on CPUs).
            streams: CUDA only: batches in flight at once, each with its own
                stream and pinned buffers.
            cudnn_benchmark: CUDA only: let cuDNN time its algorithms for each
                new input shape (the first batch of each size is slower).
                This sets ``torch.backends.cudnn.benchmark`` for the process.
        """
        torch = require("torch", "PyTorch", INSTALL)
        from ..training.checkpoint import load_deployable

        self.device = _parse_device(torch, device)
        if not isinstance(streams, int) or isinstance(streams, bool) or streams < 1:
            raise WbcEdgeError(f"streams must be a positive integer, got {streams!r}")
        model, meta = load_deployable(Path(path))
        super().__init__(meta)
        self.path = Path(path)
        self.cuda = self.device.type == "cuda"
        # FP16 only where it is fast (CUDA); the CPU stays FP32.
        self.half = bool(half) if half is not None else self.cuda
        self.channels_last = bool(channels_last)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.half:
            model.net.half()
        self.model = model
        self._torch = torch
        self._slots: list[_Slot] = []
        self._free: queue.SimpleQueue | None = None
        # thread id -> slots it holds: a thread holding every slot must not wait for one
        self._owners: dict[int, int] = {}
        self._owners_lock = threading.Lock()
        if self.cuda:
            if cudnn_benchmark:
                torch.backends.cudnn.benchmark = True
            self._slots = [_Slot(torch, self.device, self.input_shape, meta.num_outputs) for _ in range(streams)]
            self._free = queue.SimpleQueue()
            for slot in self._slots:
                self._free.put(slot)
            # The weights were uploaded on the default stream; the slots' streams must see them.
            torch.cuda.synchronize(self.device)
            # The batch protocol exists on CUDA runners only: Classifier checks for it by name.
            self.reserve, self.submit, self.collect, self.release = (
                self._reserve, self._submit, self._collect, self._release)

    # --- running ---------------------------------------------------------------

    def _forward(self, batch):
        """uint8 NHWC tensor on the device -> float outputs (logits, and the
        guard's ood_score where the model has one) on the device."""
        torch = self._torch
        x = self.model.normalize(batch)  # float32 NCHW view of NHWC memory: channels-last already
        if self.half:
            x = x.half()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model.outputs(x)

    def _infer(self, images: np.ndarray) -> np.ndarray:
        if self.cuda:
            batch = self._reserve(len(images))
            try:
                np.copyto(batch.inputs, images)  # pageable -> pinned: the upload is then a true async DMA
            except BaseException:
                self._release(batch)
                raise
            self._submit(batch)
            return self._collect(batch)
        torch = self._torch
        if not (images.flags.c_contiguous and images.flags.writeable):
            # torch.from_numpy takes no negative strides and warns on read-only memory
            images = np.array(images, order="C")
        with self._lock, torch.inference_mode():
            return self._forward(torch.from_numpy(images)).float().numpy()

    # --- the batch protocol (CUDA) ---------------------------------------------

    def _reserve(self, count: int, timeout: float | None = None) -> TorchBatch:
        """A free slot's pinned input for ``count`` images; waits up to
        ``timeout`` seconds (None: as long as it takes; 0: not at all) while
        every slot is in flight, then raises TimeoutError."""
        if self._closed or self._free is None:
            raise RuntimeError(f"{self.name}: the runner is closed")
        if not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"a batch holds at least 1 image, got {count!r}")
        me = threading.get_ident()
        block = timeout is None or timeout > 0
        with self._owners_lock:
            if block and self._owners.get(me, 0) >= len(self._slots):
                raise RuntimeError(f"{self.name}: all {len(self._slots)} batch buffers are held by this thread: "
                                   "collect() or release() one before reserving another")
        try:
            slot = self._free.get(block=block, timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: all {len(self._slots)} batch buffers are in flight") from None
        with self._owners_lock:
            self._owners[me] = self._owners.get(me, 0) + 1
        try:
            return TorchBatch(slot, int(count), owner=me)
        except BaseException:  # pinning the larger buffers failed
            self._give_back(slot, me)
            raise

    def _submit(self, batch: TorchBatch) -> None:
        """Queues upload, forward and download on the batch's stream; returns at once."""
        torch = self._torch
        _expect(batch, "reserved")
        slot = batch.slot
        try:
            with torch.cuda.stream(slot.stream), torch.inference_mode():
                images = slot.input[:batch.count].to(self.device, non_blocking=True)
                logits = self._forward(images)
                slot.output[:batch.count].copy_(logits.float(), non_blocking=True)
            # Device tensors freed here are reused only by later work on this same
            # stream (the caching allocator is stream-ordered): no early reuse.
        except BaseException:
            batch.state = "submitted"  # part of it may be queued: release() waits for it
            self._release(batch)
            raise
        batch.state = "submitted"

    def _collect(self, batch: TorchBatch) -> np.ndarray:
        """Waits for a submitted batch: float32 logits ``(count, classes)``."""
        _expect(batch, "submitted")
        try:
            batch.slot.stream.synchronize()  # this batch's stream only; the GIL is released while waiting
            return batch.slot.output[:batch.count].numpy().copy()  # the slot's buffers are reused
        finally:
            self._release(batch)

    def _release(self, batch: TorchBatch) -> None:
        """Gives a batch's slot back (after its queued work, if any, is done)."""
        if batch.state == "free":
            return
        if batch.state == "submitted":
            try:  # nothing may still read or write the buffers when the slot is reused
                batch.slot.stream.synchronize()
            except Exception:
                pass
        batch.state = "free"
        self._give_back(batch.slot, batch.owner)

    def _give_back(self, slot: _Slot, owner: int) -> None:
        with self._owners_lock:
            self._owners[owner] -= 1
            if not self._owners[owner]:
                del self._owners[owner]
        if self._free is not None:
            self._free.put(slot)

    # --- lifetime ----------------------------------------------------------------

    def close(self) -> None:
        if self.cuda and not self._closed:
            for slot in self._slots:
                slot.stream.synchronize()
            self._slots, self._free = [], None
        self.model = None
        super().close()

    def describe(self) -> dict:
        info = {**super().describe(), "device": str(self.device), "half": self.half,
                "channels_last": self.channels_last, "model": str(self.path)}
        if self.half:
            info["precision"] = "fp16"
        if self.cuda:
            info["streams"] = len(self._slots)
            info["gpu"] = self._torch.cuda.get_device_name(self.device)
        return info


class TorchBatch:
    """A reserved slot for ``count`` images: fill ``inputs`` (pinned uint8
    ``(count, H, W, 3)``, valid until collected or released), then submit."""

    __slots__ = ("count", "inputs", "owner", "slot", "state")

    def __init__(self, slot: _Slot, count: int, owner: int):
        slot.ensure(count)
        self.slot = slot
        self.count = count
        self.inputs = slot.input[:count].numpy()
        self.state = "reserved"
        self.owner = owner


class _Slot:
    """A CUDA stream and its pinned host buffers (grown to the largest batch
    seen, never shrunk; only the batch holding the slot touches them)."""

    def __init__(self, torch, device, input_shape, classes: int):
        self._torch = torch
        self.stream = torch.cuda.Stream(device=device)
        self._input_shape = tuple(input_shape)
        self._classes = classes
        self.capacity = 0
        self.input = self.output = None

    def ensure(self, count: int) -> None:
        if count > self.capacity:
            torch = self._torch
            self.input = torch.empty((count, *self._input_shape), dtype=torch.uint8, pin_memory=True)
            self.output = torch.empty((count, self._classes), dtype=torch.float32, pin_memory=True)
            self.capacity = count


def _expect(batch, state: str) -> None:
    if not isinstance(batch, TorchBatch):
        raise TypeError(f"expected a batch from reserve(), got {type(batch).__name__}")
    if batch.state != state:
        raise RuntimeError(f"this batch is {batch.state}, expected {state}")


def _parse_device(torch, device: str):
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise WbcEdgeError(f"device {device!r} is not a device PyTorch knows ({error}); use 'cpu' or 'cuda[:N]'") \
            from None
    if parsed.type not in ("cpu", "cuda"):
        raise WbcEdgeError(f"device {device!r}: the torch backend runs on 'cpu' or 'cuda[:N]'")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise WbcEdgeError(f"device {device!r} requested but PyTorch sees no CUDA GPU here "
                               f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
        index = parsed.index if parsed.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise WbcEdgeError(f"device {device!r}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)")
        parsed = torch.device("cuda", index)
    return parsed
