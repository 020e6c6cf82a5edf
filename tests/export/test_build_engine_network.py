"""build-engine's check of the parsed network against the metadata: the one
output carries every column the metadata names (logits, the guard's score,
the activation maps), not only the logits."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from wbc_edge.export.build_engine import EngineBuildError, _check_network
from wbc_edge.metadata import ModelMetadata

MODELS = Path(__file__).resolve().parents[2] / "wbc_edge" / "models"
TRT = types.SimpleNamespace(DataType=types.SimpleNamespace(UINT8="UINT8", FLOAT="FLOAT"))


def network(input_shape, output_shape):
    tensors = {"in": types.SimpleNamespace(name="images", dtype="UINT8", shape=input_shape),
               "out": types.SimpleNamespace(name="logits", dtype="FLOAT", shape=output_shape)}
    return types.SimpleNamespace(num_inputs=1, num_outputs=1, get_input=lambda i: tensors["in"],
                                 get_output=lambda i: tensors["out"])


def test_the_output_holds_every_column_the_metadata_names():
    meta = ModelMetadata.load(MODELS / "default.fp32.json")
    height, width = meta.input_size
    names = _check_network(TRT, network((-1, height, width, 3), (-1, meta.num_outputs)), meta, Path("m.onnx"))
    assert names == ("images", "logits")
    if meta.num_outputs != meta.num_classes:  # a model with the guard or the maps
        with pytest.raises(EngineBuildError, match=f"expected float32 \\[N, {meta.num_outputs}\\]"):
            _check_network(TRT, network((-1, height, width, 3), (-1, meta.num_classes)), meta, Path("m.onnx"))
