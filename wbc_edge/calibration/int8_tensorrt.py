"""INT8 for TensorRT: explicit Q/DQ placed by NVIDIA ModelOpt's ONNX PTQ.

TensorRT 10.x/11.x builds this as a strongly typed network: symmetric int8
(zero points 0), per-channel weight scales, Q/DQ where TensorRT fuses them
(ModelOpt's placement, e.g. the convolution side of a residual Add left
unquantized). Weights are stored already quantized (int8 + DequantizeLinear,
``dq_only``), which makes the file a quarter of the FP32 one.

Layers left out of INT8 run in float32 (``high_precision="fp32"``), not in
ModelOpt's default float16: ONNX Runtime's CPU optimizer mis-computes
float16 Q/DQ graphs (docs/measurements.md), and in TensorRT those layers are
fused into the int8 kernels' epilogues anyway. Calibration runs
on ONNX Runtime's CPU execution provider: no GPU needed.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wbc_edge.errors import require

if TYPE_CHECKING:
    import onnx

METHODS = ("entropy", "max")
HIGH_PRECISIONS = ("fp32", "fp16")
INSTALL = ("pip install 'wbc-edge[quantize]'  (nvidia-modelopt==0.47.0 without its [onnx] extra, "
           "which would pull onnxruntime-gpu)")
CALIBRATION_BATCH = 32



def quantize_int8_tensorrt(model: onnx.ModelProto, images: np.ndarray, method: str = "max",
                           exclude_nodes: Sequence[str] = (), high_precision: str = "fp32",
                           quiet: bool = False) -> onnx.ModelProto:
    """``model`` (float32, BatchNorm folded: see ``graph_prep.fold_for_quantization``)
    quantized to INT8 Q/DQ with ModelOpt, calibrated on ``images`` (uint8
    [N, H, W, 3], the model's input). ``exclude_nodes`` stay in float.

    ModelOpt runs in a child process: it monkeypatches ONNX Runtime's
    quantization classes for good when it quantizes (``ort_patching``), which
    would silently change what a later ``onnxruntime.quantization.quantize_static``
    in this process computes (the ``--target cpu`` path). ``quiet``: what the
    child prints goes to a log, shown only if the quantization fails."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} for --target tensorrt, got {method!r}")
    if high_precision not in HIGH_PRECISIONS:
        raise ValueError(f"high_precision must be one of {HIGH_PRECISIONS}, got {high_precision!r}")
    require("modelopt.onnx.quantization", "NVIDIA ModelOpt (ONNX quantization)", INSTALL)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import onnx

    with tempfile.TemporaryDirectory(prefix="wbc-edge-modelopt.") as tmp:
        source, data, out = Path(tmp) / "fp32.onnx", Path(tmp) / "images.npy", Path(tmp) / "int8.onnx"
        onnx.save(model, str(source))
        np.save(data, images)
        log = Path(tmp) / "modelopt.log" if quiet else None
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                pool.submit(_quantize_file, str(source), str(data), str(out), method, list(exclude_nodes),
                            high_precision, log and str(log)).result()
        except BaseException:
            if log is not None and log.exists():
                print(log.read_text(errors="replace"), end="", file=sys.stderr)
            raise
        return onnx.load(str(out))


def exclusion_patterns(names: Sequence[str]) -> list[str]:
    """ModelOpt's ``nodes_to_exclude`` for exactly these node names: it matches
    each entry as a regular expression from the start of a name, so a bare
    ``conv1`` would also exclude ``conv10`` (and ``.`` matches anything)."""
    return [re.escape(name) + "$" for name in names]


def _quantize_file(source: str, data: str, out: str, method: str, exclude_nodes: list[str],
                   high_precision: str, log: str | None = None) -> None:
    """ModelOpt PTQ of the ONNX file ``source`` into ``out`` (runs in the child process;
    with ``log``, its output, C libraries' included, goes to that file)."""
    if log is not None:
        with open(log, "w") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
    import onnx
    from modelopt.onnx.quantization import quantize

    from wbc_edge.export.onnx_files import input_name

    # ModelOpt asks NVML for GPUs and logs an ERROR when there is no driver;
    # calibration runs on the CPU by design, so that message only misleads.
    logging.getLogger("modelopt.onnx").addFilter(lambda record: "NVML" not in record.getMessage())
    images = np.load(data)
    name = input_name(onnx.load(source, load_external_data=False))
    _, height, width, channels = images.shape
    batch = min(CALIBRATION_BATCH, len(images))
    quantize(
        onnx_path=source,
        quantize_mode="int8",
        calibration_data={name: images},
        calibration_method=method,
        # One calibration step = a batch of images, not ModelOpt's default batch of 1.
        calibration_shapes=f"{name}:{batch}x{height}x{width}x{channels}",
        calibration_eps=["cpu"],
        nodes_to_exclude=exclusion_patterns(exclude_nodes),
        high_precision_dtype=high_precision,
        dq_only=True,
        output_path=out,
        log_level=logging.getLevelName(logging.WARNING),
    )
