"""FP32 ONNX -> FP16 or INT8 ONNX, with its metadata and a calibration record.

One function, :func:`calibrate`, behind ``wbc-edge calibrate``: draws the
calibration images (``dataset``), converts or quantizes (``fp16``,
``int8_tensorrt``, ``int8_cpu``), checks the result, and writes beside the output
model its JSON sidecar (a ModelMetadata with ``precision`` and a
``quantization`` record) and ``<out>.calibration.json``: the images (path, label,
sha256), the method, the resulting activation ranges, tool versions and the
command, so a run can be repeated and audited.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wbc_edge.atomic import check_output, write_atomic
from wbc_edge.errors import WbcEdgeError
from wbc_edge.metadata import ModelMetadata, sha256_of, sidecar_path

from .dataset import DEFAULT_NUM_IMAGES, DEFAULT_SEED, CalibrationSet, load_calibration_set

CONVERSIONS = ("fp16", "int8")
INT8_TARGETS = ("tensorrt", "cpu")
#: Default calibration method per INT8 target (chosen on the validation split, see the README table).
DEFAULT_METHODS = {"tensorrt": "entropy", "cpu": "percentile"}
#: Default calibration images per INT8 target where not DEFAULT_NUM_IMAGES (the same choice).
DEFAULT_NUM_IMAGES_FOR = {"tensorrt": 2048, "cpu": 2048}
RECORD_SUFFIX = ".calibration.json"


@dataclass
class CalibrationResult:
    path: Path
    metadata: ModelMetadata
    record_path: Path
    record: dict = field(repr=False)
    size_bytes: int = 0


def record_path_for(out: str | os.PathLike) -> Path:
    """``model.int8.onnx`` -> ``model.int8.calibration.json``."""
    out = Path(out)
    return out.with_name(out.stem + RECORD_SUFFIX)


def methods_for(target: str) -> tuple[str, ...]:
    from . import int8_cpu, int8_tensorrt

    return tuple(int8_tensorrt.METHODS) if target == "tensorrt" else tuple(int8_cpu.METHODS)


def _check_io(model, source) -> None:
    """The converted model must keep the contract: one uint8 input, float32 logits."""
    import onnx

    from wbc_edge.export.onnx_files import input_name

    input_name(model)
    outputs = [(o.name, o.type.tensor_type.elem_type) for o in model.graph.output]
    expected = [(o.name, o.type.tensor_type.elem_type) for o in source.graph.output]
    if outputs != expected or outputs[0][1] != onnx.TensorProto.FLOAT:
        raise WbcEdgeError(f"the converted model's outputs {outputs} differ from the source's {expected}")


def repeat_command(onnx_path, out, precision, data, manifest, target, method, num_images, seed,
                   keep_float) -> str:
    """The ``wbc-edge calibrate`` command line that repeats a run."""
    args = ["wbc-edge", "calibrate", "--onnx", str(onnx_path), "--data", str(data)]
    if manifest:
        args += ["--manifest", str(manifest)]
    args += ["--precision", precision]
    if precision == "int8":
        args += ["--target", target, "--method", method]
        if keep_float:
            args += ["--keep-float", *keep_float]
    args += ["--num-images", str(num_images), "--seed", str(seed), "--out", str(out)]
    return " ".join(shlex.quote(a) for a in args)


@contextlib.contextmanager
def _quiet(enabled: bool):
    """With progress off, the quantizers' own prints and progress bars
    (ONNX Runtime's calibrators, ModelOpt) are kept out of the output; if the
    quantizer fails, what it printed is shown with the error."""
    if not enabled:
        yield
        return
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            yield
    except BaseException:
        print(said.getvalue(), end="", file=sys.stderr)
        raise


def calibrate(onnx_path: str | os.PathLike, out: str | os.PathLike, *, precision: str,
              data: str | os.PathLike, manifest: str | os.PathLike | None = None, target: str = "tensorrt",
              method: str | None = None, num_images: int | None = None, seed: int = DEFAULT_SEED,
              keep_float: Sequence[str] = (), calibration_set: CalibrationSet | None = None,
              progress: bool = True) -> CalibrationResult:
    """Makes an FP16 or INT8 model from an FP32 one (see the module docstring).

    ``num_images``: calibration images (default: 2048 for INT8,
    512 otherwise, as the shipped models were made). ``target`` (INT8 only):
    ``tensorrt`` (ModelOpt, symmetric int8 Q/DQ) or
    ``cpu`` (ONNX Runtime, uint8 activations). ``keep_float``: layers kept out
    of INT8 (``first-conv``, ``classifier``). ``calibration_set``: images
    already drawn (the release reuses one set for every variant)."""
    from wbc_edge.errors import require
    from wbc_edge.export.onnx_files import load_model, save_model

    from .int8_tensorrt import INSTALL

    # calibrate's own hint (the [quantize] extra) before onnx_files asks for [export]
    require("onnx", "the onnx package (for calibrate)", INSTALL)
    from . import graph_prep

    if precision not in CONVERSIONS:
        raise WbcEdgeError(f"precision must be one of {CONVERSIONS}, got {precision!r}")
    if precision == "int8" and target not in INT8_TARGETS:
        raise WbcEdgeError(f"target must be one of {INT8_TARGETS}, got {target!r}")
    if precision == "int8":
        method = method or DEFAULT_METHODS[target]
        if method not in methods_for(target):
            raise WbcEdgeError(f"--method {method} is not available for --target {target}; "
                               f"choose one of {list(methods_for(target))}")
    elif method is not None or keep_float:
        raise WbcEdgeError("--method and --keep-float apply to --precision int8 only")
    if num_images is None:
        num_images = DEFAULT_NUM_IMAGES_FOR.get(target, DEFAULT_NUM_IMAGES) if precision == "int8" \
            else DEFAULT_NUM_IMAGES
    onnx_path, out = Path(onnx_path), Path(out)
    if out.suffix.lower() != ".onnx":
        raise WbcEdgeError(f"{out}: the output name must end in .onnx")
    if out.resolve() == onnx_path.resolve():
        raise WbcEdgeError(f"{out}: the output would overwrite the input model")
    check_output(out, "--out", make_parents=True)
    check_output(record_path_for(out), "the calibration record", make_parents=True)
    check_output(sidecar_path(out), "the output's metadata", make_parents=True)

    source, meta = load_model(onnx_path)
    if meta.precision != "fp32":
        raise WbcEdgeError(f"{onnx_path}: is a {meta.precision} model; calibrate starts from the FP32 model")
    started = time.time()
    if calibration_set is None:
        calibration_set = load_calibration_set(data, manifest, meta, num_images, seed, progress)

    record: dict = {"precision": precision}
    if precision == "fp16":
        from . import fp16

        converted = fp16.convert_fp16(source, calibration_set.images)
        tool = {"modelopt": _version("modelopt")}
        record["method"] = "modelopt.onnx.autocast.convert_to_mixed_precision(low_precision_type=fp16, keep_io_types)"
        record["fp32_nodes"] = fp16.fp32_nodes(converted)
    else:
        folded = graph_prep.fold_for_quantization(source)
        exclude = graph_prep.excluded_nodes(folded, list(keep_float))
        if target == "tensorrt":
            from .int8_tensorrt import quantize_int8_tensorrt

            with _quiet(not progress):
                converted = quantize_int8_tensorrt(folded, calibration_set.images, method, exclude, quiet=not progress)
            tool = {"modelopt": _version("modelopt"), "onnxruntime": _version("onnxruntime")}
        else:
            from .int8_cpu import quantize_int8_cpu

            with _quiet(not progress):
                converted = quantize_int8_cpu(folded, calibration_set.images, method, exclude)
            tool = {"onnxruntime": _version("onnxruntime")}
        graph_prep.remove_unused_opsets(converted, keep=("com.microsoft",) if target == "cpu" else ())
        record.update({"target": target, "method": method, "keep_float": list(keep_float),
                       "excluded_nodes": exclude, "qdq": graph_prep.qdq_summary(converted),
                       "activation_ranges": graph_prep.activation_ranges(converted)})
    _check_io(converted, source)

    record_file = record_path_for(out)
    quantization = {
        "target": target if precision == "int8" else "any",
        "method": record["method"] if precision == "int8" else "autocast",
        "num_images": len(calibration_set),
        "seed": seed,
        "record": record_file.name,
    }
    if precision == "int8":
        quantization["keep_float"] = list(keep_float)
    new_meta = meta.replace(
        precision=precision, format="onnx", source_sha256=sha256_of(onnx_path), quantization=quantization,
        tensorrt=None,
        extra={**{k: v for k, v in meta.extra.items() if k not in ("weight_storage", "exporter")},
               "opset": next(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx"))},
    )
    save_model(converted, out, new_meta)

    data_root = Path(data)
    full_record = {
        "model": out.name,
        "source": {"path": str(onnx_path), "sha256": new_meta.source_sha256},
        **record,
        "tools": tool,
        "data": {"root": str(data_root), "manifest": str(manifest) if manifest else None,
                 "split": "train" if manifest else "(folder: all images)"},
        "num_images": len(calibration_set),
        "seed": seed,
        "class_counts": calibration_set.class_counts(),
        "images": calibration_set.record(root=data_root),
        "skipped_images": [{"path": p, "reason": r} for p, r in calibration_set.skipped],
        "seconds": round(time.time() - started, 1),
        "command": repeat_command(onnx_path, out, precision, data, manifest, target, method, num_images, seed,
                                  keep_float),
    }
    write_atomic(record_file, json.dumps(full_record, indent=1) + "\n")
    return CalibrationResult(path=out, metadata=new_meta, record_path=record_file, record=full_record,
                             size_bytes=out.stat().st_size)


def _version(module: str) -> str:
    import importlib

    try:
        return importlib.import_module(module).__version__
    except (ImportError, AttributeError):
        return "unknown"

