"""Shared fixtures: the real cell images shipped with the tests, and the full
PBC dataset where the environment names it (WBC_EDGE_PBC_DIR)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from wbc_edge.backends.probe import exact_int8

TESTS = Path(__file__).resolve().parent
SAMPLE_DIR = TESTS / "data" / "pbc-sample"
SAMPLE_MANIFEST = SAMPLE_DIR / "manifest.csv"
REPO = TESTS.parent


def sample_rows(split: str | None = None) -> list[dict]:
    with open(SAMPLE_MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if split is None or r["split"] == split]


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def sample_manifest() -> Path:
    return SAMPLE_MANIFEST


@pytest.fixture(scope="session")
def sample_paths() -> list[Path]:
    return [SAMPLE_DIR / r["path"] for r in sample_rows()]


@pytest.fixture(scope="session")
def cell_images(sample_paths) -> list[np.ndarray]:
    """All shipped sample images, decoded to RGB uint8 arrays with Pillow."""
    from PIL import Image

    images = []
    for path in sample_paths:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB")))
    return images


@pytest.fixture(scope="session")
def pbc_dir() -> Path:
    """The full PBC dataset, for tests that need more than the shipped sample."""
    value = os.environ.get("WBC_EDGE_PBC_DIR")
    if not value or not (Path(value) / "manifest.csv").is_file():
        pytest.skip("the full PBC dataset is not available: set WBC_EDGE_PBC_DIR to its folder (with manifest.csv)")
    return Path(value)


@pytest.fixture(scope="session")
def shipped_fp32_checkpoint(tmp_path_factory) -> Path:
    """The shipped FP32 model's weights as a wbc-edge checkpoint (rebuilt from
    the ONNX), for tests of the torch backend."""
    pytest.importorskip("torch", reason="PyTorch is needed (pip install 'wbc-edge[torch]')")
    from wbc_edge.models import variant_path

    fp32 = variant_path("fp32")
    if not fp32.is_file():
        pytest.skip(f"the FP32 model {fp32.name} is not in this checkout")
    from benchmarks.prototype import load_prototype_model
    from wbc_edge.training.checkpoint import save_checkpoint

    net, meta, _ = load_prototype_model(onnx_path=fp32)
    # the network's weights only: the guard's statistics and the maps are not part of it
    record = {k: v for k, v in meta.to_dict().items() if k not in ("domain_guard", "cam")}
    return save_checkpoint({"model": net.state_dict(), "meta": record},
                           tmp_path_factory.mktemp("ckpt") / "rebuilt.pt")


#: INT8-CPU parity is a target only where the CPU runs U8S8 without saturating.
needs_exact_int8 = pytest.mark.skipif(
    not exact_int8(), reason="this CPU has no VNNI or AMX: the U8S8 INT8-CPU model saturates here, so it is "
    "not the default and its parity with FP32 is not a target (docs/measurements.md)")
