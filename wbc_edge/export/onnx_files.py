"""ONNX model files with their wbc-edge metadata: embedded in ``metadata_props``
(under ``wbc_edge.metadata.ONNX_METADATA_KEY``) and in the JSON sidecar, both
written by :func:`save_model` so they always agree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from wbc_edge.errors import MetadataError, WbcEdgeError, require
from wbc_edge.metadata import ONNX_METADATA_KEY, ModelMetadata, resolve_metadata, sidecar_path

if TYPE_CHECKING:
    import onnx

ONNX_INSTALL = "pip install 'wbc-edge[export]'"


class OnnxModelError(WbcEdgeError):
    """An ONNX file that is not a valid wbc-edge model."""


def embed_metadata(model: onnx.ModelProto, meta: ModelMetadata) -> None:
    """Puts ``meta`` into the model's ``metadata_props`` (replacing any older copy)."""
    kept = [p for p in model.metadata_props if p.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_METADATA_KEY, meta.to_json()


def embedded_metadata_json(model: onnx.ModelProto) -> str | None:
    return next((p.value for p in model.metadata_props if p.key == ONNX_METADATA_KEY), None)


def load_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, ModelMetadata]:
    """An ONNX model and its metadata (sidecar and embedded copy must agree)."""
    onnx = require("onnx", "the onnx package", ONNX_INSTALL)
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # DecodeError and friends
        raise OnnxModelError(f"{path}: not a readable ONNX model ({error})") from None
    try:
        meta = resolve_metadata(path, embedded_metadata_json(model))
    except MetadataError as error:
        raise OnnxModelError(str(error)) from None
    return model, meta


def input_name(model: onnx.ModelProto) -> str:
    """The name of the model's one (uint8 image) input."""
    import onnx

    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(graph_inputs) != 1 or graph_inputs[0].type.tensor_type.elem_type != onnx.TensorProto.UINT8:
        raise OnnxModelError(
            "expected one uint8 input [N, H, W, 3] (a model made by 'wbc-edge export'), found "
            f"{[(i.name, i.type.tensor_type.elem_type) for i in graph_inputs]}")
    return graph_inputs[0].name


def save_model(model: onnx.ModelProto, path: str | os.PathLike, meta: ModelMetadata,
               check: bool = True) -> Path:
    """Embeds ``meta``, checks the model with ``onnx.checker`` (full check, with
    shape inference), writes it atomically, then writes the JSON sidecar."""
    onnx = require("onnx", "the onnx package", ONNX_INSTALL)
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise OnnxModelError(f"{path}: the output name must end in .onnx")
    embed_metadata(model, meta)
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as error:
            raise OnnxModelError(f"{path}: the model fails onnx.checker: {error}") from None
    from wbc_edge.atomic import check_output, write_atomic

    check_output(sidecar_path(path), "the model's metadata", make_parents=True)
    # serialized here: onnx.save wants a file name, and the atomic writer's file has only a descriptor
    write_atomic(path, model.SerializeToString(), make_parents=True)
    meta.save(sidecar_path(path))
    return path
