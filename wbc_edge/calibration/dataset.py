"""Calibration images: a stratified draw from the training split, read and
preprocessed by exactly the inference path, and the record that lets a run be
repeated.

Only training images are ever drawn. With a manifest, only ``split=train`` rows
are candidates, and any of them whose content (sha256) also appears among the
manifest's ``test`` rows is dropped as well. Without a manifest (a folder per
class) the whole folder is taken to be training data: keep test images out of it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from wbc_edge.errors import WbcEdgeError
from wbc_edge.metadata import ModelMetadata, sha256_of

DEFAULT_NUM_IMAGES = 512
DEFAULT_SEED = 0
TRAIN_SPLIT = "train"


class CalibrationDataError(WbcEdgeError):
    """Calibration images that cannot be drawn as asked."""


@dataclass
class CalibrationSet:
    """Preprocessed calibration images and where each came from."""

    images: np.ndarray  # uint8 (N, H, W, 3), as the model takes them
    paths: list[str]
    labels: list[str]
    sha256: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable picks

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for label in self.labels:
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))

    def record(self, root: str | os.PathLike | None = None) -> list[dict]:
        """The image list for the calibration record (paths relative to ``root``)."""
        def shown(path: str) -> str:
            if root is None:
                return path
            try:
                return os.path.relpath(path, root)
            except ValueError:  # another drive
                return path
        return [{"path": shown(p), "label": label, "sha256": s}
                for p, label, s in zip(self.paths, self.labels, self.sha256)]


def stratified_pick(samples: Sequence, num_images: int, seed: int = DEFAULT_SEED) -> list:
    """``num_images`` samples spread as evenly as possible over the labels
    (a class with too few gives all it has, the others make up the rest),
    drawn at random with ``seed`` from the path-sorted list: reproducible."""
    if num_images < 1:
        raise CalibrationDataError(f"the number of calibration images must be >= 1, got {num_images}")
    by_label: dict[str, list] = {}
    for sample in sorted(samples, key=lambda s: str(s.path)):
        by_label.setdefault(sample.label, []).append(sample)
    if not by_label:
        raise CalibrationDataError("no candidate calibration images")
    rng = np.random.default_rng(seed)
    order = {label: list(rng.permutation(len(items))) for label, items in sorted(by_label.items())}
    quota = dict.fromkeys(order, 0)
    remaining = min(num_images, sum(len(v) for v in order.values()))
    # Round-robin over the classes that still have images: even quotas, and
    # small classes give all they have.
    while remaining:
        open_labels = [label for label in order if quota[label] < len(order[label])]
        share = max(1, remaining // len(open_labels))
        for label in open_labels:
            take = min(share, len(order[label]) - quota[label], remaining)
            quota[label] += take
            remaining -= take
            if not remaining:
                break
    picked = [by_label[label][i] for label in order for i in order[label][:quota[label]]]
    return sorted(picked, key=lambda s: (s.label, str(s.path)))


def training_candidates(data: str | os.PathLike, manifest: str | os.PathLike | None,
                        classes: Sequence[str]) -> list:
    """The images calibration may draw from: ``split=train`` rows of the manifest
    (not one whose content is also a test image), or a whole folder per class."""
    from wbc_edge.datasets import read_samples

    if manifest is None:
        samples = read_samples(data)
    else:
        all_samples = read_samples(data, manifest)
        if all(s.split is None for s in all_samples):
            raise CalibrationDataError(
                f"{manifest}: has no 'split' column: calibration draws from the training split only; "
                "add a split column (train/val/test) or pass a folder of training images without --manifest")
        with open(manifest, newline="") as f:
            hashes = [row.get("sha256") or None for row in csv.DictReader(f)]  # one per sample, same order
        test_hashes = {h for s, h in zip(all_samples, hashes) if s.split == "test" and h}
        samples = [s for s, h in zip(all_samples, hashes) if s.split == TRAIN_SPLIT and h not in test_hashes]
        if not samples:
            raise CalibrationDataError(f"{manifest}: no rows with split={TRAIN_SPLIT}")
    unknown = sorted({s.label for s in samples} - set(classes))
    if unknown:
        raise CalibrationDataError(f"labels not among the model's classes {list(classes)}: {unknown}")
    return samples


def load_calibration_set(data: str | os.PathLike, manifest: str | os.PathLike | None, meta: ModelMetadata,
                         num_images: int = DEFAULT_NUM_IMAGES, seed: int = DEFAULT_SEED,
                         progress: bool = True) -> CalibrationSet:
    """Draws, reads and preprocesses the calibration images for a model
    (``meta``'s input size and resize policy), with a progress bar."""
    from wbc_edge.datasets import load_images

    candidates = training_candidates(data, manifest, meta.classes)
    picked = stratified_pick(candidates, num_images, seed)
    loaded = load_images(picked, meta.classes, meta.input_size, policy=meta.resize_policy,
                         progress=progress, desc="calibration images")
    if len(loaded) == 0:
        raise CalibrationDataError(f"none of the {len(picked)} calibration images could be read: {loaded.errors[:3]}")
    return CalibrationSet(
        images=loaded.images,
        paths=list(loaded.paths),
        labels=[meta.classes[i] for i in loaded.labels],
        sha256=[sha256_of(p) for p in loaded.paths],
        skipped=list(loaded.errors),
    )
