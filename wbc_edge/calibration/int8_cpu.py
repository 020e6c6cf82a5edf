"""INT8 for x86 CPUs (VNNI / AMX) with ONNX Runtime: ``quantize_static``.

Asymmetric uint8 activations and symmetric int8 per-channel weights (U8S8),
the combination ONNX Runtime's x86 integer kernels are fastest with, in the QDQ
format: ONNX Runtime fuses the Q/DQ pairs into its integer kernels when it loads
the model (which needs the ``com.microsoft`` opset import, see
``graph_prep.remove_unused_opsets``). Measured here (2-core AMD EPYC with
AVX-512 VNNI, onnxruntime 1.32, 2 threads, ResNet-18 at 128x128, images/s at
batch 64 / batch 1): QDQ 280 / 239, QOperator 280 / 229, FP32 94 / 76, the
TensorRT-style symmetric Q/DQ model 68 / 65. QDQ and QOperator run alike; QDQ
is kept because it is the format ONNX Runtime recommends and other execution
providers run too. Keeping the first convolution and the classifier in float
costs about a quarter (211 / 192).

Weights are not reduced to 7 bits (``reduce_range``): that guards against
saturation on x86 CPUs without VNNI or AMX, but cost the shipped model 0.7
point of balanced accuracy, past the INT8 target; on such CPUs the default is
FP32 instead (docs/measurements.md, "INT8 and the CPU's instructions").
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wbc_edge.errors import require

if TYPE_CHECKING:
    import onnx

#: --method -> onnxruntime.quantization.CalibrationMethod. No "entropy": quantize_static
#: does not pass the histogram size to its entropy calibrator, whose defaults (128 bins,
#: 128 quantized bins) leave one candidate threshold, the maximum: the very ranges of
#: "max" (docs/measurements.md).
METHODS = {"percentile": "Percentile", "max": "MinMax"}
CALIBRATION_BATCH = 32



def even_batch(count: int, largest: int) -> int:
    """The largest batch size up to ``largest`` that divides ``count``: ONNX
    Runtime's histogram calibrators stack each tensor's batches into one
    array, which fails when the last batch is shorter."""
    return next(b for b in range(min(largest, max(count, 1)), 0, -1) if count % b == 0)


def _reader(name: str, images: np.ndarray, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class BatchReader(CalibrationDataReader):
        """Feeds the calibration images in batches (re-readable)."""

        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(images):
                return None
            chunk = images[self.start:self.start + batch]
            self.start += batch
            return {name: chunk}

        def rewind(self):
            self.start = 0

    return BatchReader()


def quantize_int8_cpu(model: onnx.ModelProto, images: np.ndarray, method: str = "percentile",
                      exclude_nodes: Sequence[str] = ()) -> onnx.ModelProto:
    """``model`` (float32, BatchNorm folded: see ``graph_prep.fold_for_quantization``)
    quantized by ONNX Runtime to QDQ with uint8 activations and int8
    per-channel weights, calibrated on ``images`` (uint8 [N, H, W, 3])."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)} for --target cpu, got {method!r}")
    require("onnxruntime.quantization", "ONNX Runtime quantization", "pip install 'wbc-edge[quantize]'")
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from wbc_edge.export.onnx_files import input_name

    with tempfile.TemporaryDirectory(prefix="wbc-edge-ortq.") as tmp:
        source, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(source))
        quantize_static(
            str(source), str(out),
            calibration_data_reader=_reader(input_name(model), images, even_batch(len(images), CALIBRATION_BATCH)),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, METHODS[method]),
            nodes_to_exclude=list(exclude_nodes),
        )
        return onnx.load(str(out))
