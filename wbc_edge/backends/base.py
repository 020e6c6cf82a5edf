"""The one contract every backend keeps (after Polygraphy's runners).

A runner turns a preprocessed batch, uint8 ``[N, H, W, 3]`` RGB, into float32
logits ``[N, classes]``; temperature, softmax and review policy are applied
above it, identically for every backend.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

import numpy as np

from ..metadata import ModelMetadata


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
