"""How the weights are stored in an FP32 ONNX file: lossless half-precision storage.

A ResNet-18's float32 weights take 44.7 MB; the package ships at most 50 MB of
models. Rounding the trained weights once to float16-representable values
(:func:`round_state_dict_to_fp16`; no effect on accuracy: docs/measurements.md) makes every
weight exactly representable in float16, so the exported graph can store each
such initializer as float16 followed by ``Cast(to=float32)``
(:func:`store_weights_as_fp16`), half the bytes, with the very same float32
values and float32 compute: ONNX Runtime and TensorRT fold the casts at load.

BatchNorm stays unfolded in that graph: folding multiplies conv weights by
``gamma / sqrt(var + eps)``, and the products would no longer be representable.
It also keeps the initializer names those of the ResNet state_dict, so
:func:`state_dict_from_onnx` rebuilds the PyTorch model from a shipped ONNX file.

Quantizers and converters (ModelOpt, onnxconverter-common, ORT quantization)
want plain float32 Conv weights: :func:`materialize_fp32_weights` undoes the
storage form first, exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # heavy imports stay inside the functions
    import onnx
    import torch

#: Suffix of the float16 initializer that a ``Cast`` turns back into the named float32 weight.
FP16_SUFFIX = "::fp16"
#: The prefix DeployableModel puts before the ResNet's own parameter names.
NET_PREFIX = "net."


def fp16_exact(values: np.ndarray) -> bool:
    """Whether every value of a float32 array survives float32 -> float16 -> float32 unchanged."""
    values = np.asarray(values)
    if values.dtype != np.float32:
        return False
    with np.errstate(over="ignore"):
        return bool(np.array_equal(values.astype(np.float16).astype(np.float32), values))


def round_state_dict_to_fp16(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """A copy of ``state`` with every float32 tensor rounded to the nearest
    float16-representable value (round-to-nearest-even), kept as float32.

    A tensor with a value beyond float16's range (|x| > 65504) is left as it is
    (it will be stored in float32). Returns the new state and a summary: how
    many tensors were rounded or kept, and the largest relative change.
    """
    import torch

    rounded, kept, max_rel = [], [], 0.0
    out = {}
    for name, tensor in state.items():
        if tensor.dtype != torch.float32:
            out[name] = tensor
            continue
        half = tensor.half().float()
        if not torch.isfinite(half).all():
            out[name] = tensor
            kept.append(name)
            continue
        scale = tensor.abs().max().item()
        if scale > 0:
            max_rel = max(max_rel, (half - tensor).abs().max().item() / scale)
        out[name] = half
        rounded.append(name)
    summary = {"rounded": len(rounded), "kept_fp32": kept, "max_relative_change": max_rel}
    return out, summary


def _initializer_users(graph: onnx.GraphProto) -> dict[str, int]:
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    return users


def store_weights_as_fp16(model: onnx.ModelProto, min_elements: int = 16) -> list[str]:
    """Rewrites, in place, each float32 initializer whose values are all exactly
    representable in float16 as a float16 initializer (``NAME::fp16``) and a
    ``Cast`` to float32 named ``NAME``: the graph computes with bit-identical
    float32 weights. Initializers of fewer than ``min_elements`` values are not
    worth a node and stay float32. Returns the names stored as float16."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    stored, casts, keep = [], [], []
    for init in graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            values = numpy_helper.to_array(init)
            if values.size >= min_elements and fp16_exact(values):
                half = numpy_helper.from_array(values.astype(np.float16), init.name + FP16_SUFFIX)
                keep.append(half)
                casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                              name=f"{init.name}/storage_cast"))
                stored.append(init.name)
                continue
        keep.append(init)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # Casts first: they must precede their users in topological order.
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return stored


def materialize_fp32_weights(model: onnx.ModelProto) -> int:
    """Undoes :func:`store_weights_as_fp16` in place: each ``Cast(to=float32)``
    of a float16 initializer becomes a float32 initializer under the Cast's
    output name, with exactly the values the Cast produced. Returns how many."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    users = _initializer_users(graph)
    new_inits, drop_nodes, drop_inits = [], set(), set()
    for index, node in enumerate(graph.node):
        if node.op_type != "Cast" or len(node.input) != 1:
            continue
        source = inits.get(node.input[0])
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if source is None or source.data_type != onnx.TensorProto.FLOAT16 or to != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(source).astype(np.float32)
        new_inits.append(numpy_helper.from_array(values, node.output[0]))
        drop_nodes.add(index)
        users[source.name] -= 1
        if users[source.name] == 0:
            drop_inits.add(source.name)
    if not drop_nodes:
        return 0
    nodes = [n for i, n in enumerate(graph.node) if i not in drop_nodes]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [init for init in graph.initializer if init.name not in drop_inits]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    return len(drop_nodes)


def state_dict_from_onnx(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The ResNet state_dict (numpy arrays, float32) held in an FP32 ONNX made by
    ``wbc-edge export``: initializers named ``net.<param>``, whether stored as
    float32 or as float16 + Cast, and parameters the exporter de-duplicated
    (an ``Identity`` of another initializer). BatchNorm's ``num_batches_tracked``
    is not in the graph; it is filled with 0.

    Raises ValueError for a graph with folded BatchNorm (nothing to rebuild from)."""
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(model)
    materialize_fp32_weights(model)
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    state = {name[len(NET_PREFIX):]: np.array(array, dtype=np.float32) for name, array in values.items()
             if name.startswith(NET_PREFIX)}
    batchnorms = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    if not batchnorms:
        raise ValueError("the graph has no BatchNormalization nodes (folded into the convolutions): "
                         "its initializers are not a ResNet state_dict")
    for node in batchnorms:
        prefix = node.input[1][len(NET_PREFIX):].rsplit(".", 1)[0]
        state[f"{prefix}.num_batches_tracked"] = np.zeros((), dtype=np.int64)
    return state
