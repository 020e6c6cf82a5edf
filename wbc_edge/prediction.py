"""One cell's answer: what it is, how sure, whether a person should look."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """The classification of one input, or why it could not be classified.

    Attributes:
        path: the input's file path or name where it has one (paths, file
            objects, PIL images opened from a file); None for bytes and arrays.
        label: the predicted class, None when ``error`` is set.
        confidence: the calibrated probability of ``label``
            (``softmax(logits / temperature)``), None when ``error`` is set.
        probabilities: every class's calibrated probability, ``{class: p}`` in
            the model's class order (sums to 1); None when ``error`` is set.
        review: whether a technologist should check this cell.
        review_reason: why (``"low confidence (0.612 < 0.90)"``,
            ``"ig is always reviewed"``), None when not reviewed.
        error: None, or why this input could not be classified (``"file not
            found"``, ``"corrupt or truncated image (...)"``, ...).
        ood_score: the domain guard's score (higher: less like the training
            images); None when the model has no guard or ``error`` is set.
        out_of_distribution: whether the cell is unlike the training images
            (score over the guard's threshold, or no white cell found); such a
            cell is always flagged for review. None when unknown.
        cam: only when asked (``predict_batch(..., cam=True)``): each class's
            activation map over the last stage, float32 ``(classes, h, w)``
            (``ModelMetadata.cam``), in the model's class order; the mean of
            a class's map plus the classifier's bias is its logit, so higher
            values mark where the evidence for that class lies. Not part of
            :meth:`to_dict`.
    """

    path: str | None
    label: str | None = None
    confidence: float | None = None
    probabilities: dict[str, float] | None = None
    review: bool = False
    review_reason: str | None = None
    error: str | None = None
    ood_score: float | None = None
    out_of_distribution: bool | None = None
    cam: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when the input was classified."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (the report's ``images`` entries)."""
        return {
            "path": self.path,
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "review": self.review,
            "review_reason": self.review_reason,
            "error": self.error,
            "ood_score": self.ood_score,
            "out_of_distribution": self.out_of_distribution,
        }

    @classmethod
    def failed(cls, path: str | None, error: str) -> Prediction:
        return cls(path=path, error=error)
