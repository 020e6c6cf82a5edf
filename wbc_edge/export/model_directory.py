"""A model directory: one model in every form a lab needs, written all at once.

    MODEL_DIR/model.fp32.onnx           (+ .json)   the reference, any backend
    MODEL_DIR/model.int8-cpu.onnx       (+ .json, .calibration.json)   onnxruntime on CPUs
    MODEL_DIR/model.int8-tensorrt.onnx  (+ .json, .calibration.json)   TensorRT (build an engine from it)

``--model MODEL_DIR`` picks the variant for the backend and precision as for
the shipped model (``wbc_edge.models.folder_models``). The directory is built
in a temporary folder beside its target and renamed into place at the end, so
an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from wbc_edge.atomic import publish_directory
from wbc_edge.errors import WbcEdgeError

NAME = "model"


def prepare_target(out: str | os.PathLike, force: bool) -> Path:
    """Checks ``out`` before any work: refused if it exists (unless ``force``) or
    is not a directory that may be replaced."""
    out = Path(out)
    if out.is_symlink():
        raise WbcEdgeError(f"{out}: is a symbolic link; name a new directory")
    if out.exists():
        if not force:
            raise WbcEdgeError(f"{out}: already exists; pass --force to replace it, or name a new directory")
        if not out.is_dir():
            raise WbcEdgeError(f"{out}: exists and is not a directory")
    parent = out.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise WbcEdgeError(f"{out}: its folder {parent} does not exist or is not writable")
    return out


def build(out: str | os.PathLike, fill: Callable[[Path], None], force: bool = False) -> Path:
    """Calls ``fill(tmp)`` to write the directory's files into a temporary folder
    beside ``out``, then renames it to ``out`` (replacing an old one with ``force``)."""
    out = prepare_target(out, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.resolve().parent))
    try:
        fill(tmp)
        if out.exists():  # --force: the old directory goes once the new one is complete
            shutil.rmtree(out)
        publish_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_variants(folder: Path, checkpoint: Path, calibration_set, verify_images: Path,
                   data_root: Path, progress: bool = True) -> dict:
    """FP32 (float16 weight storage, verified against PyTorch), INT8 for CPUs
    and INT8 Q/DQ for TensorRT calibrated on ``calibration_set``, in ``folder``.
    Returns what was written, per variant."""
    from wbc_edge.calibration.calibrate import calibrate

    from .onnx_export import export_checkpoint

    fp32 = folder / f"{NAME}.fp32.onnx"
    exported = export_checkpoint(checkpoint, fp32, weight_storage="fp16", verify_images=verify_images)
    written = {"fp32": {"path": fp32.name, "size_bytes": exported.size_bytes,
                        "parity": exported.parity.to_dict()}}
    for variant, target in (("int8-cpu", "cpu"), ("int8-tensorrt", "tensorrt")):
        path = folder / f"{NAME}.{variant}.onnx"
        try:
            result = calibrate(fp32, path, precision="int8", data=data_root, target=target,
                               calibration_set=calibration_set, progress=progress)
        except ImportError as error:  # ModelOpt absent: the CPU variant still ships
            written[variant] = {"skipped": f"{error}; pip install 'wbc-edge[quantize]'"}
            continue
        written[variant] = {"path": path.name, "size_bytes": result.size_bytes,
                            "method": result.metadata.quantization["method"]}
    return written
