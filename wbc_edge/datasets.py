"""Labelled image sets: a folder per class or a manifest CSV, read once through
the inference preprocessing into memory.

Class names are kept in a fixed, recorded order (sorted, unless given).
Unreadable images are skipped and listed, never a crash mid-epoch.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wbc_edge.decode import ImageReadError, decode_images
from wbc_edge.errors import WbcEdgeError
from wbc_edge.files import find_images
from wbc_edge.preprocess import preprocess_batch


class DatasetError(WbcEdgeError):
    """A dataset that cannot be read as described."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    split: str | None = None


def read_manifest(manifest: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Sample]:
    """Samples from a CSV with columns ``path,label[,split]`` (others ignored).
    Relative paths are taken from ``root``, by default the manifest's folder;
    a path that leads outside ``root`` (absolute, ``../``, or a link out of
    it) is refused, so a manifest cannot make a run read other files."""
    manifest = Path(manifest)
    root = Path(root) if root is not None else manifest.parent
    try:
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as error:
        raise DatasetError(f"{manifest}: cannot read the manifest ({error})") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetError(f"{manifest}: expected a CSV header with at least 'path,label[,split]'")
    outside = [(line, row["path"]) for line, row in enumerate(rows, start=2)
               if not is_inside(root, row["path"] or "")]
    if outside:
        shown = "; ".join(f"line {line}: {path!r}" for line, path in outside[:5])
        more = f" and {len(outside) - 5} more" if len(outside) > 5 else ""
        raise DatasetError(f"{manifest}: {len(outside)} path{'s' if len(outside) != 1 else ''} lead outside the "
                           f"data folder {os.fspath(root)!r} ({shown}{more}); manifest paths must be relative "
                           "paths inside it")
    return [Sample(root / row["path"], row["label"], row.get("split") or group_split(row.get("group")))
            for row in rows]


def is_inside(root: str | os.PathLike, relative: str) -> bool:
    """Whether ``root/relative`` stays inside ``root``: not absolute, no
    ``..`` climbing out, and (links followed) still under ``root``."""
    if not relative or os.path.isabs(relative) or (os.altsep and relative.startswith(os.altsep)):
        return False
    if os.path.normpath(relative).split(os.sep)[0] == os.pardir:
        return False
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root, relative))
    return target == base or target.startswith(base.rstrip(os.sep) + os.sep)


#: Shares of the groups that go to train and val in :func:`group_split` (the rest: test).
GROUP_SPLIT = (0.70, 0.15)


def group_split(group: str | None) -> str | None:
    """The split of a manifest row that has a ``group`` column but no ``split``:
    decided by a hash of the group name, so every image of one group (one
    smear, one patient, one source picture) lands in the same split, and the
    split is the same on every machine."""
    if not group:
        return None
    bucket = int.from_bytes(hashlib.sha256(group.encode()).digest()[:4], "big") / 2 ** 32
    if bucket < GROUP_SPLIT[0]:
        return "train"
    return "val" if bucket < GROUP_SPLIT[0] + GROUP_SPLIT[1] else "test"


def scan_folder(root: str | os.PathLike) -> list[Sample]:
    """Samples from a folder per class (``root/<label>/**/<image>``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        samples.extend(Sample(path, class_dir.name) for path in find_images(class_dir))
    if not samples:
        raise DatasetError(f"{root}: no images found in class sub-folders (expected {root}/<label>/<image>)")
    return samples


def read_samples(data: str | os.PathLike, manifest: str | os.PathLike | None = None,
                 split: str | None = None) -> list[Sample]:
    """A folder-per-class tree, or a manifest whose relative paths are under
    ``data``; optionally only one ``split``."""
    samples = read_manifest(manifest, root=data) if manifest else scan_folder(data)
    if split is not None:
        if manifest is None:
            raise DatasetError("--split needs a manifest with a 'split' column")
        samples = [s for s in samples if s.split == split]
        if not samples:
            raise DatasetError(f"{manifest}: no samples in split {split!r}")
    return samples


def class_names(samples: Sequence[Sample]) -> list[str]:
    """The fixed class order: sorted label names."""
    return sorted({s.label for s in samples})


@dataclass
class ImageSet:
    """Preprocessed images in memory, with integer labels."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    paths: list[str]
    classes: list[str]
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of skipped inputs
    #: per image, whether cell centring found a white cell (None: the policy does not look)
    cell_found: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))


def load_images(samples: Sequence[Sample], classes: Sequence[str], size: tuple[int, int],
                policy: str = "stretch", chunk: int = 256, progress: bool = True,
                desc: str = "reading images") -> ImageSet:
    """Decodes and preprocesses ``samples`` (exactly as inference does).
    Samples whose label is not in ``classes`` are an error; unreadable images
    are skipped and recorded in ``errors``."""
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({s.label for s in samples} - set(index))
    if unknown:
        raise DatasetError(f"labels not among the model's classes {list(classes)}: {unknown}")
    images = np.empty((len(samples), *size, 3), dtype=np.uint8)
    keep: list[int] = []
    found = np.ones(len(samples), bool)
    errors: list[tuple[str, str]] = []
    bar = tqdm(total=len(samples), desc=desc, unit="img", disable=not progress, leave=False)
    for start in range(0, len(samples), chunk):
        part = samples[start:start + chunk]
        decoded = decode_images([s.path for s in part])
        good = [i for i, d in enumerate(decoded) if not isinstance(d, ImageReadError)]
        errors.extend((str(part[i].path), d.reason) for i, d in enumerate(decoded) if isinstance(d, ImageReadError))
        if good:
            out = images[len(keep):len(keep) + len(good)]
            boxes = np.zeros((len(good), 5), np.float32)
            preprocess_batch([decoded[i] for i in good], size, out=out, policy=policy, boxes=boxes)
            found[len(keep):len(keep) + len(good)] = boxes[:, 4] > 0
            keep.extend(start + i for i in good)
        bar.update(len(part))
    bar.close()
    return ImageSet(
        images=images[:len(keep)],
        labels=np.array([index[samples[i].label] for i in keep], dtype=np.int64),
        paths=[str(samples[i].path) for i in keep],
        classes=list(classes),
        errors=errors,
        cell_found=found[:len(keep)] if policy == "cell_center" else None,
    )
