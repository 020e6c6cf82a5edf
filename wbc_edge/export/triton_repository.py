"""A Triton Inference Server model repository for a wbc-edge model.

    REPO/
      wbc-edge-triton.json          what was exported from what, and the engine build command
      NAME/                         platform onnxruntime_onnx: runs anywhere (CPU, or GPU with ORT's CUDA EP)
        config.pbtxt
        labels.txt                  the classes, one a line, in the model's order
        1/model.onnx
      NAME_tensorrt/                platform tensorrt_plan: the GPU server's model
        config.pbtxt
        labels.txt
        model.onnx, model.json      what the engine is built from (not loaded by Triton)
        build-engine.sh             the exact 'wbc-edge build-engine' command that makes 1/model.plan
        1/                          model.plan goes here, built on the GPU that serves it

Everything comes from the model's metadata (:class:`wbc_edge.metadata.ModelMetadata`):
the input's name and shape (the ONNX graph's, checked against ``input_size``),
the outputs, the labels, the batch profile. The metadata itself rides along
as the config parameter ``wbc_edge_metadata`` (its JSON), which the SDK's
Triton backend (:mod:`wbc_edge.backends.triton`) reads and checks, so a
client applies the same temperature, review policy and domain guard as a
local run.

Outputs: a wbc-edge ONNX model has one output tensor whose columns are the
logits, then the guard's ``ood_score`` and the flattened class activation
maps where the model has them (``ModelMetadata.output_columns``). Triton's
per-class output (``label_filename``, the classification extension) needs
the logits as a tensor of their own, so the repository's ``model.onnx`` ends
with Slice (and, for the maps, Reshape) nodes giving ``logits`` ``[C]``,
``ood_score`` ``[1]`` and ``cam`` ``[C, h, w]``; the network before them is
unchanged. A model with only logits, whose output is already named
``logits``, is copied byte for byte.

The repository is built in a temporary folder beside ``REPO`` and renamed
into place at the end (:func:`wbc_edge.export.model_directory.build`); an
existing ``REPO`` is replaced only with ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wbc_edge.atomic import write_atomic
from wbc_edge.errors import WbcEdgeError, require
from wbc_edge.metadata import ONNX_METADATA_KEY, ModelMetadata, resolve_metadata, sha256_of

from .model_directory import build

#: The model config parameter that holds the wbc-edge metadata JSON.
METADATA_PARAMETER = "wbc_edge_metadata"
#: The repository's own record (Triton reads only model folders; files beside them are ignored).
MANIFEST_NAME = "wbc-edge-triton.json"
LABELS_NAME = "labels.txt"
DEFAULT_NAME = "wbc_resnet18"
DEFAULT_MAX_BATCH_SIZE = 64
#: How long Triton holds a request to gather a larger batch: short next to a
#: batch's compute, so a lone request is barely delayed.
DEFAULT_QUEUE_DELAY_US = 2000
TENSORRT_SUFFIX = "_tensorrt"
#: The tensor the original single output is renamed to inside a rewritten graph.
_ROWS = "wbc_edge_rows"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass
class TritonExport:
    """What :func:`export_triton` wrote."""

    out: Path
    name: str
    metadata: ModelMetadata
    #: Triton model name -> its folder
    models: dict[str, Path] = field(default_factory=dict)
    #: the command that makes the TensorRT model's 1/model.plan (None: no TensorRT model)
    build_command: str | None = None
    #: why there is no TensorRT model, when there is none
    tensorrt_skipped: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


def output_dims(meta: ModelMetadata) -> dict[str, list[int]]:
    """Triton's outputs for a model (per image, without the batch dimension), by name,
    in ``output_columns`` order."""
    dims = {"logits": [meta.num_classes]}
    if meta.domain_guard is not None:
        dims["ood_score"] = [1]
    if meta.cam is not None:
        dims["cam"] = list(meta.cam_shape)
    return dims


def _has_int8_cpu(model) -> bool:
    from wbc_edge.models import folder_models, shipped_models

    if model is None:
        return "int8-cpu" in shipped_models()
    return Path(model).is_dir() and "int8-cpu" in folder_models(Path(model))


def export_triton(out: str | os.PathLike, model: str | os.PathLike | None = None, *, precision: str | None = None,
                  name: str = DEFAULT_NAME, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, instances: int = 1,
                  queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, force: bool = False) -> TritonExport:
    """Writes a Triton model repository at ``out`` for ``model`` (a wbc-edge ONNX
    file, a model directory, or None: the shipped model).

    ``precision`` picks the variant of the shipped model or a model directory
    (onnxruntime: ``int8`` runs ``int8-cpu``; TensorRT: ``int8-tensorrt``,
    then fp16, fp32). Without it the onnxruntime model is ``int8-cpu`` where
    there is one, whatever CPU exports: the repository is for the server's CPU
    (with VNNI or AMX; ``precision="fp32"`` for one without), not this one's.

    Raises:
        WbcEdgeError: bad arguments, ``out`` exists without ``force``, or the
            model is not a wbc-edge ONNX model.
    """
    from wbc_edge.models import resolve_model

    _check_arguments(name, max_batch_size, instances, queue_delay_us)
    out = Path(out)
    if precision is None and _has_int8_cpu(model):
        precision = "int8"
    onnx_path = resolve_model(model, precision=precision, backend="onnxruntime")
    if onnx_path.suffix.lower() != ".onnx":
        raise WbcEdgeError(f"{onnx_path}: export-triton takes an ONNX model (or a model directory); "
                           f"got a {onnx_path.suffix} file")
    meta = _onnx_metadata(onnx_path)
    _check_labels(meta)
    trt_path, trt_skipped = _tensorrt_source(model, precision, onnx_path, meta)
    trt_meta = _onnx_metadata(trt_path) if trt_path is not None else None
    if trt_meta is not None:
        meta.check_compatible(trt_meta, what=f"{onnx_path} vs {trt_path}")
    trt_name = name + TENSORRT_SUFFIX
    plan_command = None
    if trt_path is not None:
        plan_command = build_engine_command(out / trt_name, max_batch_size)

    result = TritonExport(out=out, name=name, metadata=meta, build_command=plan_command,
                          tensorrt_skipped=trt_skipped)

    def fill(tmp: Path) -> None:
        ort_dir = tmp / name
        (ort_dir / "1").mkdir(parents=True)
        input_name = _write_triton_onnx(onnx_path, meta, ort_dir / "1" / "model.onnx")
        write_atomic(ort_dir / LABELS_NAME, labels_text(meta))
        write_atomic(ort_dir / "config.pbtxt", config_text(
            meta, name=name, platform="onnxruntime_onnx", input_name=input_name, max_batch_size=max_batch_size,
            instances=instances, kind="KIND_AUTO", queue_delay_us=queue_delay_us))
        result.models[name] = out / name
        models = {name: {"platform": "onnxruntime_onnx", "source": str(onnx_path),
                         "source_sha256": sha256_of(onnx_path), "precision": meta.precision}}
        if trt_path is not None:
            trt_dir = tmp / trt_name
            (trt_dir / "1").mkdir(parents=True)
            trt_input = _write_triton_onnx(trt_path, trt_meta, trt_dir / "model.onnx")
            trt_meta.save(trt_dir / "model.json")
            write_atomic(trt_dir / LABELS_NAME, labels_text(trt_meta))
            write_atomic(trt_dir / "config.pbtxt", config_text(
                trt_meta, name=trt_name, platform="tensorrt_plan", input_name=trt_input,
                max_batch_size=max_batch_size, instances=instances, kind="KIND_GPU", queue_delay_us=queue_delay_us))
            write_atomic(trt_dir / "build-engine.sh", "#!/bin/sh\n# Makes 1/model.plan on the GPU that serves it "
                         "(with the TensorRT version of the Triton server that loads it).\nset -e\ncd \"$(dirname "
                         f"\"$0\")\"\n{build_engine_command(Path('.'), max_batch_size)}\n")
            os.chmod(trt_dir / "build-engine.sh", 0o755)
            result.models[trt_name] = out / trt_name
            models[trt_name] = {"platform": "tensorrt_plan", "source": str(trt_path),
                                "source_sha256": sha256_of(trt_path), "precision": trt_meta.precision,
                                "build_command": plan_command}
        result.manifest = {
            "format": "wbc-edge triton repository", "version": 1, "name": name, "models": models,
            "max_batch_size": max_batch_size, "instances": instances, "queue_delay_us": queue_delay_us,
            "outputs": output_dims(meta), "classes": meta.classes, "tensorrt_skipped": trt_skipped,
        }
        write_atomic(tmp / MANIFEST_NAME, json.dumps(result.manifest, indent=2) + "\n")

    build(out, fill, force=force)
    return result


def build_engine_command(model_dir: Path, max_batch_size: int) -> str:
    """The ``wbc-edge build-engine`` command that makes ``model_dir/1/model.plan``
    with one batch profile covering ``max_batch_size`` (Triton runs each
    instance on the plan's first profile; the SDK's extra in-flight profiles
    would only cost build time)."""
    folder = Path(model_dir)
    return (f"wbc-edge build-engine --onnx {_quote(folder / 'model.onnx')} --out {_quote(folder / '1' / 'model.plan')} "
            f"--min-batch 1 --opt-batch {max_batch_size} --max-batch {max_batch_size} --profiles 1")


def labels_text(meta: ModelMetadata) -> str:
    return "".join(f"{label}\n" for label in meta.classes)


def config_text(meta: ModelMetadata, *, name: str, platform: str, input_name: str, max_batch_size: int,
                instances: int, kind: str, queue_delay_us: int) -> str:
    """A model's ``config.pbtxt`` (protobuf text of Triton's ModelConfig)."""
    height, width = meta.input_size
    shape = f"[ {height}, {width}, 3 ]"
    lines = [
        f"# wbc-edge {meta.name} ({meta.precision}): {meta.num_classes} classes, uint8 NHWC input {height}x{width}",
        f"name: {_text(name)}",
        f"platform: {_text(platform)}",
        f"max_batch_size: {max_batch_size}",
        "version_policy: { latest: { num_versions: 1 } }",
        "input [",
        "  {",
        f"    name: {_text(input_name)}",
        "    data_type: TYPE_UINT8",
        "    format: FORMAT_NHWC",
        f"    dims: {shape}",
        "  }",
        "]",
        "output [",
    ]
    outputs = output_dims(meta)
    for i, (output, dims) in enumerate(outputs.items()):
        lines += ["  {", f"    name: {_text(output)}", "    data_type: TYPE_FP32",
                  f"    dims: [ {', '.join(map(str, dims))} ]"]
        if output == "logits":
            lines.append(f"    label_filename: {_text(LABELS_NAME)}")
        lines.append("  }," if i < len(outputs) - 1 else "  }")
    lines += [
        "]",
        "instance_group [",
        f"  {{ count: {instances} kind: {kind} }}",
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred_batch_sizes(max_batch_size)))} ]",
        f"  max_queue_delay_microseconds: {queue_delay_us}",
        "}",
        "model_warmup [",
    ]
    warmups = sorted({1, max_batch_size})
    for i, batch in enumerate(warmups):
        lines += [
            "  {",
            f"    name: \"zeros_batch_{batch}\"",
            f"    batch_size: {batch}",
            "    inputs {",
            f"      key: {_text(input_name)}",
            f"      value: {{ data_type: TYPE_UINT8 dims: {shape} zero_data: true }}",
            "    }",
            "  }," if i < len(warmups) - 1 else "  }",
        ]
    metadata_json = json.dumps(meta.to_dict(), separators=(",", ":"), ensure_ascii=True)
    lines += [
        "]",
        "parameters {",
        f"  key: {_text(METADATA_PARAMETER)}",
        f"  value: {{ string_value: {_text(metadata_json)} }}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Quarter, half and full ``max_batch_size`` (distinct, at least 1)."""
    return sorted({max(1, max_batch_size // 4), max(1, max_batch_size // 2), max_batch_size})


# ----------------------------------------------------------------- inside


def _check_arguments(name: str, max_batch_size: int, instances: int, queue_delay_us: int) -> None:
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS or name.startswith((".", "-")):
        raise WbcEdgeError(f"--name {name!r}: a Triton model name is letters, digits, '_', '-' and '.' "
                           "(not starting with '.' or '-')")
    for option, value, low in (("--max-batch-size", max_batch_size, 1), ("--instances", instances, 1),
                               ("queue delay", queue_delay_us, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise WbcEdgeError(f"{option} must be a whole number >= {low}, got {value!r}")


def _check_labels(meta: ModelMetadata) -> None:
    bad = [c for c in meta.classes if c != c.strip() or any(ch in c for ch in "\r\n") or not c.isprintable()]
    if bad:
        raise WbcEdgeError(f"class names {bad!r} cannot be written to labels.txt (one name a line)")


def _onnx_metadata(path: Path) -> ModelMetadata:
    """The metadata of a wbc-edge ONNX model (sidecar and/or embedded)."""
    embedded = None
    try:
        onnx = require("onnx", "the onnx package", "pip install 'wbc-edge[export]'")
        model = onnx.load(str(path), load_external_data=False)
        embedded = {p.key: p.value for p in model.metadata_props}.get(ONNX_METADATA_KEY)
    except ImportError:
        pass
    except Exception as error:  # onnx's DecodeError and friends
        raise WbcEdgeError(f"{path}: not a readable ONNX model ({error})") from None
    return resolve_metadata(path, embedded)


def _tensorrt_source(model, precision: str | None, onnx_path: Path, meta: ModelMetadata) -> tuple[Path | None, str | None]:
    """The ONNX the TensorRT plan is built from, or None and why not."""
    from wbc_edge.models import default_precision, folder_models, shipped_models, variant_for

    if model is None or Path(model).is_dir():
        present = shipped_models() if model is None else folder_models(model)
        try:
            wanted = precision or default_precision("tensorrt", present)
        except WbcEdgeError as error:
            return None, str(error)
        # the TensorRT variant of the precision, else the FP32 reference
        for variant in (variant_for(wanted, "tensorrt"), "fp32"):
            if variant in present:
                return present[variant].path, None
        return None, f"no {variant_for(wanted, 'tensorrt')} or fp32 variant for TensorRT"
    target = (meta.quantization or {}).get("target")
    if meta.precision == "int8" and target == "cpu":
        return None, (f"{onnx_path.name} is quantized for CPUs (uint8 activations), which TensorRT does not build; "
                      "pass its fp32 or int8-tensorrt model (or the model directory) for a TensorRT model")
    return onnx_path, None


def _write_triton_onnx(source: Path, meta: ModelMetadata, target: Path) -> str:
    """Writes the repository's ONNX (named outputs, see the module docstring)
    and returns its input's name."""
    onnx = require("onnx", "the onnx package", "pip install 'wbc-edge[export]'")
    model = onnx.load(str(source), load_external_data=True)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise WbcEdgeError(f"{source}: a wbc-edge model has one input and one output; found inputs "
                           f"{[i.name for i in inputs]} and outputs {[o.name for o in graph.output]}")
    tensor_in, tensor_out = inputs[0].type.tensor_type, graph.output[0].type.tensor_type
    dims_in = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_in.shape.dim]
    height, width = meta.input_size
    if tensor_in.elem_type != onnx.TensorProto.UINT8 or dims_in[1:] != [height, width, 3] or len(dims_in) != 4:
        raise WbcEdgeError(f"{source}: input '{inputs[0].name}' is {dims_in} of ONNX type {tensor_in.elem_type}; "
                           f"its metadata says uint8 [N, {height}, {width}, 3]")
    if dims_in[0] != -1:
        raise WbcEdgeError(f"{source}: the input's batch dimension is fixed at {dims_in[0]}; Triton batches "
                           "requests, which needs a dynamic batch ('wbc-edge export' makes one)")
    dims_out = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_out.shape.dim]
    if tensor_out.elem_type != onnx.TensorProto.FLOAT or len(dims_out) != 2 or dims_out[1] not in (-1, meta.num_outputs):
        raise WbcEdgeError(f"{source}: output '{graph.output[0].name}' is {dims_out}; its metadata says float32 "
                           f"[N, {meta.num_outputs}] ({', '.join(meta.output_columns)})")
    outputs = output_dims(meta)
    if list(outputs) == ["logits"] and graph.output[0].name == "logits":
        shutil.copyfile(source, target)  # already what Triton needs: the same bytes
        return inputs[0].name
    raw = graph.output[0].name
    batch = tensor_in.shape.dim[0]
    _rename_tensor(graph, raw, _ROWS)
    del graph.output[:]
    helper = onnx.helper
    for output, columns in meta.output_columns.items():
        suffix = f"{output}_columns"
        graph.initializer.extend([
            helper.make_tensor(f"{_ROWS}_{suffix}_starts", onnx.TensorProto.INT64, [1], [columns.start]),
            helper.make_tensor(f"{_ROWS}_{suffix}_ends", onnx.TensorProto.INT64, [1], [columns.stop]),
            helper.make_tensor(f"{_ROWS}_{suffix}_axes", onnx.TensorProto.INT64, [1], [1]),
        ])
        sliced = output if output != "cam" else f"{_ROWS}_{suffix}"
        graph.node.append(helper.make_node(
            "Slice", [_ROWS, f"{_ROWS}_{suffix}_starts", f"{_ROWS}_{suffix}_ends", f"{_ROWS}_{suffix}_axes"],
            [sliced], name=f"wbc_edge_{output}"))
        if output == "cam":
            graph.initializer.append(helper.make_tensor(f"{_ROWS}_cam_shape", onnx.TensorProto.INT64, [4],
                                                        [-1, *outputs["cam"]]))
            graph.node.append(helper.make_node("Reshape", [sliced, f"{_ROWS}_cam_shape"], ["cam"],
                                               name="wbc_edge_cam_maps"))
        value = helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [None, *outputs[output]])
        value.type.tensor_type.shape.dim[0].CopyFrom(batch)
        graph.output.append(value)
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    _check_same_rows(source, data, meta)
    write_atomic(target, data)
    return inputs[0].name


def _rename_tensor(graph, old: str, new: str) -> None:
    for node in graph.node:
        for items in (node.input, node.output):
            for i, value in enumerate(items):
                if value == old:
                    items[i] = new
    for value in graph.value_info:
        if value.name == old:
            value.name = new


def _check_same_rows(source: Path, rewritten: bytes, meta: ModelMetadata) -> None:
    """The rewritten graph's outputs, flattened and side by side, are the
    original's rows (checked on two images with onnxruntime when it is here)."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        return
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    before = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(rewritten, options, providers=["CPUExecutionProvider"])
    height, width = meta.input_size
    images = np.random.default_rng(0).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    feed = {before.get_inputs()[0].name: images}
    (rows,) = before.run(None, feed)
    parts = after.run(list(meta.output_columns), feed)
    joined = np.concatenate([p.reshape(len(images), -1) for p in parts], axis=1)
    if joined.shape != rows.shape or not np.array_equal(joined, rows):
        raise WbcEdgeError(f"{source}: the repository's model does not reproduce the model's outputs "
                           "(a bug in wbc-edge export-triton)")


def _text(value: str) -> str:
    """A protobuf text-format string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(os.fspath(path))

