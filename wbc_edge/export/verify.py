"""Export verification: the ONNX file must give PyTorch's answers on real cell images.

The rule: over the verification images, ``max |Δlogit| <= 1e-4 x
max |logit|`` and the same top-1 class on every image, or the export fails.
The images go through the inference path (``decode_images`` and
``preprocess_batch`` with the model's input size and resize policy).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wbc_edge.decode import ImageReadError, decode_images
from wbc_edge.errors import ModelMismatchError, WbcEdgeError
from wbc_edge.files import find_images
from wbc_edge.metadata import ModelMetadata
from wbc_edge.preprocess import preprocess_batch

#: max |Δlogit| allowed, relative to max |logit| of the reference.
RELATIVE_TOLERANCE = 1e-4


class ParityError(ModelMismatchError):
    """An exported or converted model does not give the reference's answers."""


@dataclass
class ParityReport:
    what: str
    num_images: int
    max_abs_diff: float
    max_abs_logit: float
    relative_tolerance: float
    top1_mismatches: list[str] = field(default_factory=list)

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / self.max_abs_logit if self.max_abs_logit else float(self.max_abs_diff > 0)

    @property
    def ok(self) -> bool:
        return self.relative_diff <= self.relative_tolerance and not self.top1_mismatches

    def to_dict(self) -> dict:
        return {**asdict(self), "relative_diff": self.relative_diff, "ok": self.ok}

    def describe(self) -> str:
        return (f"{self.what}: {self.num_images} images, max |dlogit| {self.max_abs_diff:.3g} = "
                f"{self.relative_diff:.3g} x max |logit| ({self.max_abs_logit:.3g}; allowed "
                f"{self.relative_tolerance:g}), top-1 differs on {len(self.top1_mismatches)}")


def compare_logits(reference: np.ndarray, candidate: np.ndarray, names: Sequence[str], what: str,
                   relative_tolerance: float = RELATIVE_TOLERANCE) -> ParityReport:
    """Measures ``candidate`` against ``reference`` logits (same images, same order)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ParityError(f"{what}: logits of shape {candidate.shape}, expected {reference.shape}")
    if not np.all(np.isfinite(candidate)):
        raise ParityError(f"{what}: non-finite logits (NaN or inf) on "
                          f"{int((~np.isfinite(candidate)).any(axis=1).sum())} images")
    differs = np.flatnonzero(reference.argmax(axis=1) != candidate.argmax(axis=1))
    return ParityReport(
        what=what,
        num_images=len(reference),
        max_abs_diff=float(np.abs(reference - candidate).max()) if reference.size else 0.0,
        max_abs_logit=float(np.abs(reference).max()) if reference.size else 0.0,
        relative_tolerance=relative_tolerance,
        top1_mismatches=[str(names[i]) for i in differs],
    )


def check_parity(reference: np.ndarray, candidate: np.ndarray, names: Sequence[str], what: str,
                 relative_tolerance: float = RELATIVE_TOLERANCE) -> ParityReport:
    """:func:`compare_logits`, raising :class:`ParityError` when the rule fails."""
    report = compare_logits(reference, candidate, names, what, relative_tolerance)
    if not report.ok:
        shown = ", ".join(report.top1_mismatches[:5]) + (" ..." if len(report.top1_mismatches) > 5 else "")
        raise ParityError(
            f"{report.describe()}{': ' + shown if shown else ''}. The model does not reproduce its "
            "reference; it was not accepted (check the PyTorch, onnx and onnxruntime versions, and the opset)")
    return report


def default_verification_dir() -> Path | None:
    """The repository's ``examples/`` folder (16 real cell images), when this
    package runs from a source checkout; None in an installed wheel."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    return examples if examples.is_dir() and find_images(examples) else None


def load_verification_images(folder: str | os.PathLike, meta: ModelMetadata,
                             limit: int = 64) -> tuple[np.ndarray, list[str]]:
    """Up to ``limit`` images from ``folder`` (sorted), preprocessed as inference does."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WbcEdgeError(f"{folder}: verification image folder not found")
    paths = find_images(folder)[:limit]
    decoded = decode_images(paths)
    good = [(p, d) for p, d in zip(paths, decoded) if not isinstance(d, ImageReadError)]
    if not good:
        raise WbcEdgeError(f"{folder}: no readable images to verify the export on "
                           "(give --verify-images a folder of cell images)")
    batch = preprocess_batch([d for _, d in good], meta.input_size, policy=meta.resize_policy)
    return batch, [str(p) for p, _ in good]
