"""The images a benchmark runs on: real cell JPEGs, from the full PBC set where
``WBC_EDGE_PBC_DIR`` names it, else the 208-image sample shipped in
``tests/data/pbc-sample`` (repeated to the count asked for, and said so)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO / "tests" / "data" / "pbc-sample"
PBC_ENV = "WBC_EDGE_PBC_DIR"


@dataclass(frozen=True)
class ImageSet:
    """``count`` image paths and where they come from."""

    paths: tuple[Path, ...]
    source: str
    distinct: int

    @property
    def note(self) -> str:
        if self.distinct < len(self.paths):
            return (f"{len(self.paths)} inputs = the {self.distinct} distinct images of {self.source} repeated "
                    f"(set {PBC_ENV} to the full PBC set for {len(self.paths)} distinct images)")
        return f"{len(self.paths)} distinct images of {self.source}"

    def describe(self) -> dict:
        return {"count": len(self.paths), "distinct": self.distinct, "source": self.source, "note": self.note}


def _manifest_paths(folder: Path) -> list[Path]:
    with open(folder / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # A fixed pseudo-random order over every class and split: by content hash.
    rows.sort(key=lambda r: (r.get("sha256") or "", r["path"]))
    return [folder / r["path"] for r in rows]


def cell_images(count: int) -> ImageSet:
    """``count`` real cell image paths (the full set when available)."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    value = os.environ.get(PBC_ENV)
    if value and (Path(value) / "manifest.csv").is_file():
        folder, source = Path(value), f"the PBC dataset ({value})"
    else:
        folder, source = SAMPLE_DIR, "the shipped sample (tests/data/pbc-sample)"
    available = _manifest_paths(folder)
    if not available:
        raise RuntimeError(f"{folder}: its manifest lists no images")
    paths = tuple(available[i % len(available)] for i in range(count))
    return ImageSet(paths=paths, source=source, distinct=min(count, len(available)))


def link_folder(images: ImageSet, folder: Path) -> Path:
    """A folder of ``count`` uniquely named links to the images (a repeated
    image appears under several names), for commands that take a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(images.paths):
        link = folder / f"{index:05d}_{path.name}"
        if not link.exists():
            link.symlink_to(path.resolve())
    return folder


def tile(cells, batch: int):
    """``batch`` images made by repeating ``cells`` (n, H, W, 3) in order, C-contiguous."""
    import numpy as np

    reps = -(-batch // len(cells))
    return np.ascontiguousarray(np.concatenate([cells] * reps)[:batch])
