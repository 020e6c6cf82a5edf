"""FP16: float16 weights and compute, float32 where the numerics need it, with
NVIDIA ModelOpt's AutoCast.

AutoCast runs the FP32 model on real calibration images (the inference
preprocessing) and keeps in float32 every node whose values would not fit
float16 (``data_max``, ``init_max``). ``keep_io_types``: the uint8 image input
and the float32 logits stay as the contract says. BatchNorm stays unfolded, as
exported: the shipped FP32 weights are float16 values already, so the FP16
weights are exactly the FP32 ones (TensorRT folds BatchNorm when it builds).

onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)`` was
tried first and produced an invalid graph for this model (it leaves the
uint8 -> float Cast's type inconsistent: ONNX Runtime refuses to load it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wbc_edge.errors import require

from .int8_tensorrt import INSTALL

if TYPE_CHECKING:
    import onnx

#: Images AutoCast's reference run uses (it keeps every intermediate tensor in memory).
MAX_REFERENCE_IMAGES = 64


def convert_fp16(model: onnx.ModelProto, images: np.ndarray) -> onnx.ModelProto:
    """``model`` (float32) converted to float16 by AutoCast, with the float32
    fallbacks it finds running ``images`` (uint8 [N, H, W, 3]; at most
    MAX_REFERENCE_IMAGES are used, spread over the set)."""
    require("modelopt.onnx.autocast", "NVIDIA ModelOpt (AutoCast)", INSTALL)
    import copy
    import logging

    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision
    from modelopt.onnx.logging_config import configure_logging

    from wbc_edge.export.onnx_files import input_name
    from wbc_edge.export.weight_storage import materialize_fp32_weights

    configure_logging(logging.WARNING)  # AutoCast logs every step at INFO
    model = copy.deepcopy(model)
    materialize_fp32_weights(model)
    pick = np.linspace(0, len(images) - 1, min(len(images), MAX_REFERENCE_IMAGES)).round().astype(int)
    with tempfile.TemporaryDirectory(prefix="wbc-edge-autocast.") as tmp:
        source, data = Path(tmp) / "fp32.onnx", Path(tmp) / "reference.npz"
        onnx.save(model, str(source))
        np.savez(data, **{input_name(model): images[np.unique(pick)]})
        return convert_to_mixed_precision(
            onnx_path=str(source), low_precision_type="fp16", keep_io_types=True,
            calibration_data=str(data), providers=["cpu"],
        )


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Compute nodes left in float32 in a converted model (their float inputs
    come through a Cast to float32, or they consume float32 initializers)."""
    import onnx

    float32_inits = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    cast_to_fp32 = {n.output[0] for n in model.graph.node
                    if n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)}
    skip = {"Cast", "Constant", "Identity", "Shape", "Transpose", "Flatten", "Reshape"}
    return [n.name for n in model.graph.node
            if n.op_type not in skip and any(i in float32_inits or i in cast_to_fp32 for i in n.input)]
