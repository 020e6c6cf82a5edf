"""The results file: one JSON per run, the machine it ran on, the exact command,
and one record per measurement (raw round times and their summary).

Schema (``"schema": "wbc-edge-benchmarks/1"``)::

    {"schema", "mode": "full" | "quick", "command", "machine": {...},
     "workload": {...}, "notes": [...],
     "results": [{"stage", "name", "backend", "precision", "batch", "threads",
                  "images_per_round", "rounds", "warmup_rounds", "baseline",
                  "seconds": {"min", "p50", "mean", "p99", "max"},
                  "images_per_s", "latency_ms": {"p50", "p99"}, "times_s", "note"}]}

``images_per_s`` is ``images_per_round / median round time``; ``latency_ms`` is
the per-call time (for inference: one batch). The speed-up of a record is its
``images_per_s`` over that of the ``baseline`` record of the same stage in the
same file (see :mod:`benchmarks.report`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = "wbc-edge-benchmarks/1"
REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPOSITORY / "benchmarks" / "results"
#: Stages in report order.
STAGES = ("decode", "preprocess", "preprocess 224x224", "inference", "input size", "extra outputs", "end-to-end",
          "end-to-end streams")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Measurement:
    """One benchmark: what ran, on how many images per round, and how long each round took."""

    stage: str
    name: str
    backend: str
    precision: str
    batch: int | None
    threads: int | None
    images_per_round: int
    times_s: list[float]
    warmup_rounds: int = 0
    baseline: bool = False
    note: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if not self.times_s or min(self.times_s) <= 0:
            raise ValueError(f"{self.name}: needs at least one positive round time, got {self.times_s}")
        if self.images_per_round < 1:
            raise ValueError(f"{self.name}: images_per_round must be positive")

    def to_dict(self) -> dict:
        times = self.times_s
        median = percentile(times, 50)
        record = asdict(self)
        record.update(
            rounds=len(times),
            seconds={"min": min(times), "p50": median, "mean": sum(times) / len(times),
                     "p99": percentile(times, 99), "max": max(times)},
            images_per_s=self.images_per_round / median,
            latency_ms={"p50": 1000 * median, "p99": 1000 * percentile(times, 99)},
        )
        return record


def results_document(measurements: Sequence[Measurement], *, mode: str, command: str, machine: dict,
                     workload: dict | None = None, notes: Sequence[str] = ()) -> dict:
    return {
        "schema": SCHEMA,
        "mode": mode,
        "command": command,
        "machine": machine,
        "workload": workload or {},
        "notes": list(notes),
        "results": [m.to_dict() for m in measurements],
    }


def default_path(mode: str, machine: dict, directory: Path = RESULTS_DIR) -> Path:
    """``results/2025-01-31T12-00-00Z-HOST.json`` (quick runs under ``results/quick/``)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
    host = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(machine.get("host", "host")))[:40]
    gpu = "-gpu" if machine.get("gpu") else ""
    folder = directory / "quick" if mode == "quick" else directory
    return folder / f"{stamp}-{host}{gpu}.json"


def write_results(document: dict, path: str | os.PathLike) -> Path:
    """Writes the document atomically (a crash leaves no half file), every
    path in it inside the repository written relative to the repository
    (a results file must not name the folders of the machine it ran on)."""
    from wbc_edge.atomic import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=1).replace(json.dumps(str(REPOSITORY) + os.sep)[1:-1], "")
    write_atomic(path, text + "\n")
    return path


def load_results(path: str | os.PathLike) -> dict:
    """Reads a results file, refusing anything that is not one."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable results JSON ({error})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a wbc-edge benchmark results file (schema {SCHEMA!r})")
    return document


def newest_results(directory: Path = RESULTS_DIR, quick: bool = False) -> Path | None:
    """The most recent results file (by its name's timestamp)."""
    folder = directory / "quick" if quick else directory
    files = sorted(folder.glob("*.json"))
    return files[-1] if files else None
