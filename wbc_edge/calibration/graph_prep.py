"""Getting an FP32 model ready for the quantizers, and reading back what they did.

The shipped FP32 model stores its weights as float16 + Cast and keeps
BatchNorm unfolded (see ``wbc_edge.export.weight_storage``). Quantizers want
plain float32 Conv weights with BatchNorm folded in, so that the per-channel
weight scales belong to the weights that actually run: :func:`fold_for_quantization`
materializes the weights, then runs ONNX Runtime's own quantization
pre-processing (``quant_pre_process``: shape inference and the basic graph
optimizations, which fold BatchNorm into the convolutions).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wbc_edge.errors import WbcEdgeError

if TYPE_CHECKING:
    import onnx

#: Names for the layers the field keeps in higher precision when INT8 loses accuracy.
END_LAYERS = ("first-conv", "classifier")


def fold_for_quantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with float32 weights and BatchNorm folded into the
    convolutions (ONNX Runtime's ``quant_pre_process``), standard ops only."""
    import copy

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from wbc_edge.export.weight_storage import materialize_fp32_weights

    model = copy.deepcopy(model)
    materialize_fp32_weights(model)
    with tempfile.TemporaryDirectory(prefix="wbc-edge-prep.") as tmp:
        source, folded = Path(tmp) / "fp32.onnx", Path(tmp) / "folded.onnx"
        onnx.save(model, str(source))
        quant_pre_process(str(source), str(folded))
        result = onnx.load(str(folded))
    remove_unused_opsets(result, keep=("com.microsoft",))  # see remove_unused_opsets
    left = [n.name for n in result.graph.node if n.op_type == "BatchNormalization"]
    if left:
        raise WbcEdgeError(f"BatchNorm could not be folded into the convolutions: {left[:3]}")
    return result


def remove_unused_opsets(model: onnx.ModelProto, keep: tuple[str, ...] = ()) -> None:
    """Drops opset imports of domains no node uses (ORT's optimizer declares a
    dozen of its own). Domains in ``keep`` stay: ONNX Runtime fuses Q/DQ into
    its integer kernels only in models that import ``com.microsoft`` (without
    it the INT8 CPU model runs at half the speed: docs/measurements.md)."""
    used = {node.domain or "" for node in model.graph.node} | {"", "ai.onnx", *keep}
    kept = [o for o in model.opset_import if (o.domain or "") in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


#: The exporter's name scopes of the extra outputs' nodes (DeployableModel.guard and .cam).
GUARD_SCOPE, CAM_SCOPE = "/guard/", "/cam/"


def float_output_nodes(model: onnx.ModelProto) -> list[str]:
    """The extra outputs' nodes, always kept in float: the domain guard's
    distances compare against a threshold fitted in float32, and the
    activation maps are an explanation, not worth a quantization error. So is
    the node that joins the heads into the model's one output (a Concat):
    quantized, the logits, the score and the maps would share one scale, set
    by the largest of them, and the logits and the score lose their precision."""
    heads = [n.name for n in model.graph.node if n.name.startswith((GUARD_SCOPE, CAM_SCOPE))]
    if not heads:
        return []
    outputs = {o.name for o in model.graph.output}
    joins = [n.name for n in model.graph.node if n.op_type == "Concat" and outputs.intersection(n.output)]
    return heads + joins


def end_layers(model: onnx.ModelProto) -> dict[str, str]:
    """Node names of the first convolution (on the normalized image) and the
    classifier (the last Gemm/MatMul outside the domain guard), found by graph structure."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    heads = [n for n in model.graph.node
             if n.op_type in ("Gemm", "MatMul") and not n.name.startswith((GUARD_SCOPE, CAM_SCOPE))]
    if not convs or not heads:
        raise WbcEdgeError("cannot find the first convolution and the classifier in the graph")
    return {"first-conv": convs[0].name, "classifier": heads[-1].name}


def excluded_nodes(model: onnx.ModelProto, keep_float: list[str] | tuple[str, ...]) -> list[str]:
    """The node names behind ``keep_float`` (a subset of END_LAYERS), and the
    domain guard's and activation maps' nodes where the model has them."""
    unknown = sorted(set(keep_float) - set(END_LAYERS))
    if unknown:
        raise WbcEdgeError(f"unknown layers to keep in float: {unknown}; choose from {list(END_LAYERS)}")
    names = end_layers(model)
    return [names[k] for k in END_LAYERS if k in keep_float] + float_output_nodes(model)


def _initializers(model: onnx.ModelProto) -> dict:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def quantizers(model: onnx.ModelProto) -> list[dict]:
    """Every QuantizeLinear/DequantizeLinear of a Q/DQ model: what it quantizes
    (an activation or a weight), its scale(s), zero point(s) and integer type."""
    values = _initializers(model)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = values.get(node.input[1])
        zero = values.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        data_is_constant = node.input[0] in values
        found.append({
            "node": node.name,
            "op": node.op_type,
            "tensor": node.input[0] if node.op_type == "QuantizeLinear" else node.output[0],
            "kind": "weight" if data_is_constant else "activation",
            "axis": next((a.i for a in node.attribute if a.name == "axis"), None),
            "scale": None if scale is None else np.asarray(scale, dtype=np.float64),
            "zero_point": None if zero is None else np.asarray(zero),
            "stored_dtype": (str(values[node.input[0]].dtype) if data_is_constant else None),
        })
    return found


def activation_ranges(model: onnx.ModelProto) -> dict[str, list[float]]:
    """The real-valued range each activation quantizer represents,
    ``[(qmin - zp) x scale, (qmax - zp) x scale]``, by tensor name."""
    ranges = {}
    for q in quantizers(model):
        if q["op"] != "QuantizeLinear" or q["kind"] != "activation" or q["scale"] is None:
            continue
        zero = q["zero_point"]
        dtype = zero.dtype if zero is not None else np.dtype(np.uint8)
        info = np.iinfo(dtype)
        zp = float(zero.ravel()[0]) if zero is not None else 0.0
        scale = float(q["scale"].ravel()[0])
        ranges[q["tensor"]] = [(info.min - zp) * scale, (info.max - zp) * scale]
    return ranges


def qdq_summary(model: onnx.ModelProto) -> dict:
    """Counts for the calibration record and tests: activation/weight quantizers,
    integer types, per-channel weights, and whether every zero point is 0."""
    qs = quantizers(model)
    weights = [q for q in qs if q["kind"] == "weight"]
    activations = [q for q in qs if q["kind"] == "activation" and q["op"] == "QuantizeLinear"]
    zero_points = [q["zero_point"] for q in qs if q["zero_point"] is not None]
    return {
        "activation_quantizers": len(activations),
        "weight_quantizers": len(weights),
        "activation_dtypes": sorted({str(q["zero_point"].dtype) for q in activations if q["zero_point"] is not None}),
        "weight_dtypes": sorted({q["stored_dtype"] or str(q["zero_point"].dtype) for q in weights}),
        "per_channel_weights": sum(1 for q in weights if q["scale"] is not None and q["scale"].size > 1),
        "all_zero_points_zero": all(not np.any(z) for z in zero_points),
    }
