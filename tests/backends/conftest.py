"""Fixtures for the backend tests: the CUDA runtime stand-in (fake_cudart.py)
put where wbc_edge.backends.cuda imports the runtime from."""

from __future__ import annotations

import pytest

from tests.backends.fake_cudart import FakeCudart


@pytest.fixture()
def fake_cudart(monkeypatch):
    """A FakeCudart (lazy streams, two GPUs) that wbc_edge's CUDA code calls instead of cuda-python."""
    from wbc_edge.backends import cuda

    fake = FakeCudart()
    monkeypatch.setattr(cuda, "_cudart", fake)
    return fake
