"""PyTorch backend: the reference for parity tests, and a GPU path where
TensorRT is absent. Runs a wbc-edge checkpoint through the same deployed input
path as the exported graph (uint8 NHWC in, normalization inside).

On CUDA it is built for throughput: FP16 weights and activations (by default),
channels-last memory (the NHWC uint8 input already is), cuDNN autotuning, and
``streams`` slots of {CUDA stream, pinned input, pinned output}: ``run_batches``
fills each job straight into a slot's pinned input while the GPU runs the
previous one (the slot scheduling of :class:`.cuda_pipeline.SlotPipeline`, the
same as the TensorRT runner's), and several threads may run batches at once,
one slot each.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ..errors import WbcEdgeError, require
from .base import BatchJob, Outputs, Runner, split_outputs
from .cuda_pipeline import Batch, SlotPipeline

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
        self._pipeline: _TorchPipeline | None = None
        if self.cuda:
            if cudnn_benchmark:
                torch.backends.cudnn.benchmark = True
            self._pipeline = _TorchPipeline(self, streams)
            self.fills_input_memory = True  # run_batches fills the slots' pinned inputs
            # The weights were uploaded on the default stream; the slots' streams must see them.
            torch.cuda.synchronize(self.device)

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
            return self._open_pipeline().run(images)  # via pinned memory: the upload is a true async DMA
        torch = self._torch
        if not (images.flags.c_contiguous and images.flags.writeable):
            # torch.from_numpy takes no negative strides and warns on read-only memory
            images = np.array(images, order="C")
        with self._lock, torch.inference_mode():
            return self._forward(torch.from_numpy(images)).float().numpy()

    def run_batches(self, jobs: Iterable[BatchJob]) -> Iterator[tuple[BatchJob, Outputs | None]]:
        """On CUDA: each job filled into a slot's pinned input while the GPU
        runs the previous one; on the CPU, one job after another."""
        if not self.cuda:
            yield from super().run_batches(jobs)
            return
        for job, rows in self._open_pipeline().map(jobs):
            yield job, None if rows is None else split_outputs(self.metadata, rows)

    def _open_pipeline(self) -> _TorchPipeline:
        if self._closed or self._pipeline is None:
            raise RuntimeError(f"{self.name}: the runner is closed")
        return self._pipeline

    # --- lifetime ----------------------------------------------------------------

    def close(self) -> None:
        """Waits for the batches in progress (in any thread), then drops the
        model and the slots. Idempotent."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.close()
        self.model = None
        super().close()

    def describe(self) -> dict:
        info = {**super().describe(), "device": str(self.device), "half": self.half,
                "channels_last": self.channels_last, "model": str(self.path)}
        if self.half:
            info["precision"] = "fp16"
        if self.cuda:
            info["streams"] = self._pipeline.num_slots if self._pipeline is not None else 0
            info["gpu"] = self._torch.cuda.get_device_name(self.device)
        return info


class _TorchPipeline(SlotPipeline):
    """Slots of {CUDA stream, pinned input, pinned output} for a TorchRunner:
    upload, forward and download queued on the slot's stream."""

    def __init__(self, runner: TorchRunner, streams: int):
        super().__init__(max_batch=None)
        self.runner = runner
        torch = runner._torch
        self.slots = [_Slot(torch, runner.device, runner.input_shape, runner.metadata.num_outputs, index)
                      for index in range(streams)]

    def _inputs(self, slot: _Slot, capacity: int) -> np.ndarray:
        slot.ensure(capacity)  # only the batch holding the slot touches its buffers
        return slot.input[:capacity].numpy()

    def _start(self, batch: Batch) -> None:
        runner, slot = self.runner, batch.slot
        torch = runner._torch
        with torch.cuda.stream(slot.stream), torch.inference_mode():
            images = slot.input[:batch.rows].to(runner.device, non_blocking=True)
            rows = runner._forward(images)
            slot.output[:batch.count].copy_(rows[:batch.count].float(), non_blocking=True)
        # Device tensors freed here are reused only by later work on this same
        # stream (the caching allocator is stream-ordered): no early reuse.

    def _wait(self, batch: Batch) -> np.ndarray:
        batch.slot.stream.synchronize()  # this batch's stream only; the GIL is released while waiting
        return batch.slot.output[:batch.count].numpy().copy()  # the slot's buffers are reused

    def _drain(self, slot: _Slot) -> None:
        slot.stream.synchronize()


class _Slot:
    """A CUDA stream and its pinned host buffers (grown to the largest batch
    seen, never shrunk; only the batch holding the slot touches them)."""

    def __init__(self, torch, device, input_shape, outputs: int, index: int = 0):
        self._torch = torch
        self.index = index
        self.stream = torch.cuda.Stream(device=device)
        self._input_shape = tuple(input_shape)
        self._outputs = outputs
        self.capacity = 0
        self.input = self.output = None

    def ensure(self, count: int) -> None:
        if count > self.capacity:
            torch = self._torch
            self.input = torch.empty((count, *self._input_shape), dtype=torch.uint8, pin_memory=True)
            self.output = torch.empty((count, self._outputs), dtype=torch.float32, pin_memory=True)
            self.capacity = count


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
