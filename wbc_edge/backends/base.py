"""The one contract every backend keeps (after Polygraphy's runners).

A runner turns an ordered stream of batch jobs into ``(job, outputs)``, in
order::

    for job, outputs in runner.run_batches(jobs):
        outputs["logits"]      # float32 [n, classes]; and "ood_score", "cam" where the model has them

A :class:`BatchJob` says how many images it holds at most and fills them
itself: ``job.fill(out)`` writes the model-ready uint8 ``[n, H, W, 3]`` images
into ``out`` (memory the runner owns, such as a pinned buffer it copies to
the GPU from) or, given None, into an array of its own, and returns them
(``n <= job.count``: preprocessing may refuse an image). A runner that can
overlap work (copies and compute on a GPU, requests to a server) fills batch
k+1 while batch k runs, inside ``run_batches``. The CPU engines overlap by
``streams``: that many jobs run at once, each on a thread of its own with its
share of the engine's threads (OpenVINO's streams), so one batch's decoding
and preprocessing, which the caller does while pulling the next job, and
another's inference keep every core busy without more threads than cores.
With one stream, jobs run one after another. ``infer(images)`` is the
one-batch form, and gives the model's raw output rows
(``metadata.output_columns`` says which column is what).

Temperature, softmax and review policy are applied above the runner,
identically for every backend.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..errors import ModelMismatchError
from ..metadata import ModelMetadata

#: A batch's outputs by name (``metadata.output_columns``): "logits", and
#: "ood_score" and "cam" where the model has them; one row per image.
Outputs = dict[str, np.ndarray]


@dataclass(eq=False)
class BatchJob:
    """One batch for a runner: at most ``count`` images, written by ``fill``.

    ``fill(out)`` writes the images into ``out[:n]`` (or, with ``out=None``,
    into a new array) and returns that ``[n, H, W, 3]`` uint8 array, or None
    when none of the job's inputs can run. ``context`` is the caller's, handed
    back unchanged with the outputs.
    """

    #: images at most; 0: nothing to run (a batch of unreadable inputs), ``fill`` is not called
    count: int
    fill: Callable[[Optional[np.ndarray]], Optional[np.ndarray]]
    context: Any = None


def split_outputs(metadata: ModelMetadata, rows: np.ndarray) -> Outputs:
    """A model's raw output rows ``[n, metadata.num_outputs]`` by output name."""
    return {name: rows[:, columns] for name, columns in metadata.output_columns.items()}


class Runner(ABC):
    """Runs one model on one device."""

    #: the backend's name, as ``Classifier.load(backend=...)`` spells it
    name: str = ""

    def __init__(self, metadata: ModelMetadata):
        self.metadata = metadata
        self._closed = False
        # Serializes infer() for runners that are not thread-safe themselves.
        self._lock = threading.Lock()

    #: the largest batch one infer() call takes; None: any (callers split larger batches)
    max_batch_size: int | None = None
    #: whether run_batches hands each job's fill memory of the runner's own
    #: (pinned buffers); if not, callers may prepare the images ahead, in other threads
    fills_input_memory: bool = False
    #: jobs the base run_batches runs at once (fill and infer, a thread each);
    #: a runner with more than one must be safe to infer from several threads
    streams: int = 1

    @property
    def input_shape(self) -> tuple[int, int, int]:
        height, width = self.metadata.input_size
        return height, width, 3

    def check_batch(self, images: np.ndarray) -> None:
        """Refuses a batch of the wrong dtype or shape, naming what was expected."""
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise TypeError(f"{self.name}: expected a uint8 numpy batch, got "
                            f"{getattr(images, 'dtype', type(images).__name__)}")
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            raise ValueError(f"{self.name}: expected a batch of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {images.shape}")
        if self._closed:
            raise RuntimeError(f"{self.name}: the runner is closed")

    def infer(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` -> float32 logits ``[N, classes]``. Batches
        larger than ``max_batch_size`` are split."""
        self.check_batch(images)
        limit = self.max_batch_size
        if limit is None or len(images) <= limit:
            return self._infer(images)
        return np.concatenate([self._infer(images[i:i + limit]) for i in range(0, len(images), limit)])

    @abstractmethod
    def _infer(self, images: np.ndarray) -> np.ndarray:
        """infer() on a checked batch of at most max_batch_size images."""

    def run_batches(self, jobs: Iterable[BatchJob]) -> Iterator[tuple[BatchJob, Outputs | None]]:
        """Each job with its outputs (None when it had no image to run), in
        job order. This form fills and runs :attr:`streams` jobs at once (one
        after another with one stream); runners that overlap work otherwise
        (GPU copies, server requests) override it."""
        if self.streams <= 1:
            return (self._run_job(job) for job in jobs)
        return self._run_streams(jobs)

    def _run_job(self, job: BatchJob) -> tuple[BatchJob, Outputs | None]:
        images = job.fill(None) if job.count else None
        return job, None if images is None or not len(images) else split_outputs(self.metadata, self.infer(images))

    def _run_streams(self, jobs: Iterable[BatchJob]) -> Iterator[tuple[BatchJob, Outputs | None]]:
        # The next job is pulled (and, by the caller's generator, read) while
        # the pool runs up to `streams` earlier ones; results leave in order.
        running: deque[Future] = deque()
        pool = ThreadPoolExecutor(self.streams, thread_name_prefix=f"wbc-{self.name}-stream")
        try:
            for job in jobs:
                running.append(pool.submit(self._run_job, job))
                if len(running) >= self.streams:
                    yield running.popleft().result()
            while running:
                yield running.popleft().result()
        finally:  # stopped early or failed: nothing new starts, and nothing runs on once we return
            for future in running:
                future.cancel()
            pool.shutdown(wait=True)

    def check_outputs(self, where: object = None) -> None:
        """Runs one blank image: the model must give the values per image its
        metadata names (and the first call's setup is paid here, not by the
        first real batch). ModelMismatchError otherwise."""
        height, width = self.metadata.input_size
        rows = self.infer(np.zeros((1, height, width, 3), np.uint8))
        expected = (1, self.metadata.num_outputs)
        if rows.shape != expected:
            meta = self.metadata
            guard = " and the domain guard's ood_score" if meta.domain_guard is not None else ""
            cam = " and the class activation maps" if meta.cam is not None else ""
            raise ModelMismatchError(
                f"{where or self.describe()}: the model outputs {rows.shape[-1] if rows.ndim else rows.shape} values "
                f"per image, but its metadata names {meta.num_classes} classes ({', '.join(meta.classes)})"
                f"{guard}{cam}: {expected[1]} values")

    def close(self) -> None:
        """Frees what the runner holds (sessions, device memory). Idempotent."""
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict:
        """What is running, for reports and ``wbc-edge info``."""
        return {"backend": self.name, "precision": self.metadata.precision}
