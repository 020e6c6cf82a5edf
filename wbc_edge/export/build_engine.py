"""ONNX -> TensorRT engine, for TensorRT 10.x (Jetson, JetPack) and 11.x.

The network is strongly typed: every tensor's type comes from the ONNX graph,
so an FP32, FP16 or INT8 (explicit Q/DQ) ONNX gives an engine of that
precision, with no precision builder flags (TensorRT 11 removed them). The
engine's JSON carries the ONNX model's metadata plus where the engine may run
(:class:`wbc_edge.backends.tensorrt_compat.EngineRecord`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from wbc_edge.atomic import check_outputs, write_atomic
from wbc_edge.backends import cuda
from wbc_edge.backends.tensorrt import DEFAULT_SLOTS, import_tensorrt, shared_logger, start_tensorrt
from wbc_edge.backends.tensorrt_compat import (
    HARDWARE_LEVELS,
    INSTALL_TENSORRT,
    NEEDS_GPU,
    EngineRecord,
    check_driver_for,
    missing_for,
)
from wbc_edge.errors import MetadataError, MissingDependencyError, WbcEdgeError
from wbc_edge.metadata import ONNX_METADATA_KEY, ModelMetadata, resolve_metadata, sha256_of, sidecar_path

from .build_progress import build_progress

ENGINE_SUFFIXES = (".engine", ".plan")


class EngineBuildError(WbcEdgeError):
    """TensorRT could not parse the model or build the engine."""


class BuildRequirementsError(MissingDependencyError):
    """TensorRT, cuda-python or a GPU is missing; says which and how to get them."""

    def __init__(self, missing: list[str]):
        WbcEdgeError.__init__(
            self, "building a TensorRT engine needs what this machine lacks: " + "; ".join(missing)
            + f". Install TensorRT and cuda-python with: {INSTALL_TENSORRT} (on Jetson, TensorRT comes with "
            f"JetPack), on the machine that will run the engine, with {NEEDS_GPU}")
        self.install = INSTALL_TENSORRT
        self.missing = list(missing)


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, min_batch: int = 1,
                 opt_batch: int = 64, max_batch: int = 256, workspace_mb: int | None = None,
                 timing_cache: str | os.PathLike | None = None, version_compatible: bool = False,
                 exclude_lean_runtime: bool = False, hardware_compatible: str = "none", device: int = 0,
                 profiles: int = DEFAULT_SLOTS, progress: TextIO | None = sys.stderr) -> ModelMetadata:
    """Builds ``engine_path`` and its JSON (``model.engine`` -> ``model.json``)
    from a wbc-edge ONNX model; returns the engine's metadata.

    ``profiles`` identical optimization profiles: one per batch the runtime
    keeps in flight (TensorRT forbids concurrent execution contexts on one
    profile); the timing cache makes the copies cheap to build.

    Raises:
        BuildRequirementsError: no TensorRT, cuda-python or GPU here.
        EngineBuildError: the parser or the builder failed (with TensorRT's reasons).
        WbcEdgeError, MetadataError: bad arguments or model files.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    cache_path = Path(timing_cache) if timing_cache else None
    _check_arguments(onnx_path, engine_path, min_batch, opt_batch, max_batch, workspace_mb,
                     version_compatible, exclude_lean_runtime, hardware_compatible, profiles)
    check_outputs({"--out": engine_path, "the engine's metadata": sidecar_path(engine_path),
                   "--timing-cache": cache_path}, [onnx_path], make_parents=True)
    meta = onnx_metadata(onnx_path)
    refuse_cpu_int8(onnx_path, meta)
    missing = missing_for("build")
    if missing:
        raise BuildRequirementsError(missing)
    trt = import_tensorrt("full")
    cuda.set_device(device)
    gpu = cuda.device_info(device)
    check_driver_for(trt, gpu.driver_version)
    if hardware_compatible == "ampere+" and gpu.compute_capability < (8, 0):
        raise WbcEdgeError(f"--hardware-compatible ampere+ needs an Ampere or newer GPU to build on; this is "
                           f"{gpu.name} (compute capability {gpu.compute_capability_str})")

    started = time.monotonic()
    logger = shared_logger(trt)  # the one logger of the process; each step reports the errors since its mark
    builder = start_tensorrt(trt.Builder, trt, "builder")
    mark = logger.mark()
    network = builder.create_network(network_flags(trt))
    if network is None:
        raise EngineBuildError(f"TensorRT could not create a network: {logger.errors_since(mark)}")
    parser = start_tensorrt(lambda logger: trt.OnnxParser(network, logger), trt, "ONNX parser")
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        raise EngineBuildError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse the model:\n"
                               + parser_errors(parser))
    input_name, output_name = _check_network(trt, network, meta, onnx_path)
    graph_precision = network_precision(trt, network)
    if graph_precision != meta.precision:
        _say(progress, f"warning: {onnx_path.name} is labelled {meta.precision} but its graph looks "
                       f"{graph_precision}; the engine has the graph's types (strongly typed network)")

    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    height, width = meta.input_size
    for _ in range(profiles):  # identical: one per execution context that runs concurrently
        mark = logger.mark()
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, (min_batch, height, width, 3), (opt_batch, height, width, 3),
                          (max_batch, height, width, 3))
        if config.add_optimization_profile(profile) < 0:
            raise EngineBuildError(f"TensorRT refused the batch profile {min_batch}/{opt_batch}/{max_batch}: "
                                   f"{logger.errors_since(mark)}")
    cache = attach_timing_cache(trt, config, cache_path, progress)  # must stay alive until the build ends
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if exclude_lean_runtime:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    if hardware_compatible != "none":
        level = HARDWARE_LEVELS[hardware_compatible]
        if not hasattr(trt.HardwareCompatibilityLevel, level):
            raise EngineBuildError(f"--hardware-compatible {hardware_compatible} needs a newer TensorRT than "
                                   f"{trt.__version__}")
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)

    mark = logger.mark()
    with build_progress(trt, config, progress) as line:
        plan = builder.build_serialized_network(network, config)
        if line is not None:
            line.finish("done" if plan is not None else "failed")
    if plan is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} could not build the engine: {logger.errors_since(mark)}")
    if cache_path is not None:
        _write_atomic(cache_path, config.get_timing_cache().serialize())
    del cache  # only now: the config used it until here

    _write_atomic(engine_path, plan)
    record = EngineRecord(
        version=str(trt.__version__), gpu_name=gpu.name, compute_capability=gpu.compute_capability_str,
        min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, input_name=input_name,
        output_name=output_name, version_compatible=version_compatible,
        exclude_lean_runtime=exclude_lean_runtime, hardware_compatibility=hardware_compatible,
        profiles=profiles, engine_sha256=hashlib.sha256(plan).hexdigest(), workspace_mb=workspace_mb,
        build_seconds=round(time.monotonic() - started, 1))
    engine_meta = engine_metadata(meta, onnx_path, record)
    engine_meta.save(sidecar_path(engine_path))
    return engine_meta


def engine_metadata(onnx_meta: ModelMetadata, onnx_path: Path, record: EngineRecord) -> ModelMetadata:
    """An engine's metadata: its ONNX model's (classes, input size, normalization,
    temperature, precision, quantization facts) with the ONNX file's sha256 as
    source and the TensorRT record."""
    return onnx_meta.replace(format="engine", source_sha256=sha256_of(onnx_path), tensorrt=record.to_dict())


# --- the steps ----------------------------------------------------------------


def _check_arguments(onnx_path: Path, engine_path: Path, min_batch, opt_batch, max_batch, workspace_mb,
                     version_compatible, exclude_lean_runtime, hardware_compatible, profiles=1) -> None:
    if not onnx_path.is_file():
        raise WbcEdgeError(f"{onnx_path}: ONNX model not found")
    if engine_path.suffix.lower() not in ENGINE_SUFFIXES:
        raise WbcEdgeError(f"{engine_path}: the engine's name must end in .engine or .plan "
                           "(that is how wbc-edge knows to run it with TensorRT)")
    if sidecar_path(engine_path).resolve() == sidecar_path(onnx_path).resolve():
        raise WbcEdgeError(
            f"{engine_path} would write its metadata to {sidecar_path(engine_path)}, which is the ONNX model's "
            f"own metadata; name the engine differently, e.g. {engine_path.with_name(engine_path.stem + '.trt.engine')}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (min_batch, opt_batch, max_batch)) \
            or not 1 <= min_batch <= opt_batch <= max_batch:
        raise WbcEdgeError(f"batch sizes must satisfy 1 <= min <= opt <= max, got min {min_batch}, "
                           f"opt {opt_batch}, max {max_batch}")
    if not isinstance(profiles, int) or isinstance(profiles, bool) or not 1 <= profiles <= 8:
        raise WbcEdgeError(f"profiles must be 1 to 8 (one per batch in flight), got {profiles!r}")
    if workspace_mb is not None and workspace_mb < 1:
        raise WbcEdgeError(f"workspace must be at least 1 MiB, got {workspace_mb}")
    if exclude_lean_runtime and not version_compatible:
        raise WbcEdgeError("--exclude-lean-runtime applies only with --version-compatible")
    if hardware_compatible not in HARDWARE_LEVELS:
        raise WbcEdgeError(f"hardware compatibility must be one of {sorted(HARDWARE_LEVELS)}, "
                           f"got {hardware_compatible!r}")


def onnx_metadata(onnx_path: Path) -> ModelMetadata:
    """The wbc-edge metadata of an ONNX model (JSON beside it and/or embedded)."""
    embedded = None
    try:
        import onnx
    except ImportError:  # a TensorRT-only machine: the JSON beside the model is enough
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load(str(onnx_path), load_external_data=False)
        except Exception as error:  # DecodeError and friends
            raise WbcEdgeError(f"{onnx_path}: not a readable ONNX model ({error})") from None
        embedded = next((p.value for p in model.metadata_props if p.key == ONNX_METADATA_KEY), None)
    meta = resolve_metadata(onnx_path, embedded)
    if meta.format != "onnx":
        raise MetadataError(f"{onnx_path}: its metadata says format {meta.format!r}, expected 'onnx'")
    return meta


def network_flags(trt) -> int:
    """Creation flags for a strongly typed network on this TensorRT."""
    if int(str(trt.__version__).split(".")[0]) >= 11:
        return 0  # 11.x: always strongly typed; the flag is deprecated and ignored
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # 10.x: asked for explicitly


def parser_errors(parser) -> str:
    """The ONNX parser's errors, one line per failing node."""
    lines = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = error.node()
        # node_name()/node_operator() exist from TensorRT 10.x on; fall back to the node index.
        name = getattr(error, "node_name", lambda: "")() or (f"#{node}" if node >= 0 else "")
        operator = getattr(error, "node_operator", lambda: "")()
        where = f"node {name} ({operator})" if operator else (f"node {name}" if name else "model")
        lines.append(f"  {where}: {error.desc()} [{error.code()}]")
    return "\n".join(lines) or "  (no parser errors recorded; see TensorRT's log above)"


def _check_network(trt, network, meta: ModelMetadata, onnx_path: Path) -> tuple[str, str]:
    """The input and output names, after checking them against the metadata."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    height, width = meta.input_size
    if len(inputs) != 1 or len(outputs) != 1:
        raise EngineBuildError(f"{onnx_path}: expected one input and one output, found inputs "
                               f"{[t.name for t in inputs]} and outputs {[t.name for t in outputs]}")
    tensor_in, tensor_out = inputs[0], outputs[0]
    shape_in, shape_out = tuple(tensor_in.shape), tuple(tensor_out.shape)
    if tensor_in.dtype != trt.DataType.UINT8 or len(shape_in) != 4 or shape_in[1:] != (height, width, 3):
        raise EngineBuildError(f"{onnx_path}: input '{tensor_in.name}' is {tensor_in.dtype} {list(shape_in)}; "
                               f"a wbc-edge model takes uint8 [N, {height}, {width}, 3] (made by 'wbc-edge export')")
    if shape_in[0] != -1:
        raise EngineBuildError(f"{onnx_path}: the input's batch dimension is fixed at {shape_in[0]}; export the "
                               "model with a dynamic batch ('wbc-edge export' does)")
    if tensor_out.dtype != trt.DataType.FLOAT or len(shape_out) != 2 or shape_out[1] != meta.num_outputs:
        columns = ", ".join(f"{name} {c.stop - c.start}" for name, c in meta.output_columns.items())
        raise EngineBuildError(f"{onnx_path}: output '{tensor_out.name}' is {tensor_out.dtype} {list(shape_out)}; "
                               f"expected float32 [N, {meta.num_outputs}] ({columns})")
    return tensor_in.name, tensor_out.name


#: the layers whose output type is the precision the network computes in
#: (constants and casts only store or convert: weights kept as float16 and cast
#: to float32 are an FP32 network)
COMPUTE_LAYERS = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY")


def network_precision(trt, network) -> str:
    """``int8`` if the graph quantizes (Q/DQ), ``fp16`` if its compute layers
    (convolutions, matrix multiplies) produce half precision, else ``fp32``:
    what the strongly typed engine will run."""
    compute = {getattr(trt.LayerType, name) for name in COMPUTE_LAYERS}
    half = False
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == trt.LayerType.QUANTIZE:
            return "int8"
        if layer.type in compute:
            half = half or any(layer.get_output(k).dtype == trt.DataType.HALF for k in range(layer.num_outputs))
    return "fp16" if half else "fp32"


def refuse_cpu_int8(onnx_path: Path, meta: ModelMetadata) -> None:
    """Refuses an INT8 model quantized for onnxruntime on the CPU (asymmetric
    uint8 with zero points): TensorRT takes only symmetric int8 Q/DQ, and its
    parser would fail deep inside with no hint of the right file."""
    target = (meta.quantization or {}).get("target")
    asymmetric = target == "cpu" or _has_uint8_quantization(onnx_path)
    if asymmetric:
        raise WbcEdgeError(
            f"{onnx_path} is an INT8 model for the CPU (onnxruntime: asymmetric uint8 quantization), which "
            "TensorRT cannot build; build from the TensorRT INT8 model instead: default.int8-tensorrt.onnx, "
            f"or make one with 'wbc-edge calibrate --onnx MODEL.fp32.onnx --precision int8 --target tensorrt ...'")


def _has_uint8_quantization(onnx_path: Path) -> bool:
    """Whether the graph's Q/DQ nodes use uint8 or non-zero zero points (needs onnx; False without it)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return False
    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"):
            return True
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 \
                and node.input[2] in initializers:
            zero_point = numpy_helper.to_array(initializers[node.input[2]])
            if zero_point.dtype == np.uint8 or zero_point.any():
                return True
    return False


def attach_timing_cache(trt, config, path: Path | None, progress: TextIO | None):
    """Gives the builder a timing cache (read from ``path`` if it exists), so a
    rebuild on the same GPU and TensorRT skips most kernel timing."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = None
    try:
        cache = config.create_timing_cache(data)
    except (RuntimeError, TypeError, ValueError):
        cache = None
    if data and (cache is None or not config.set_timing_cache(cache, ignore_mismatch=False)):
        _say(progress, f"warning: timing cache {path} is unreadable or was made on another GPU or TensorRT "
                       "version; starting a new one (the file will be replaced)")
        data, cache = b"", None
    if cache is None:
        cache = config.create_timing_cache(b"")
    if not data and not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineBuildError("TensorRT refused a new, empty timing cache")
    return cache


def _write_atomic(path: Path, data) -> None:
    """Writes bytes (or an IHostMemory buffer) atomically (wbc_edge.atomic.write_atomic)."""
    write_atomic(path, writer=lambda f: f.write(memoryview(data)), make_parents=True)


def _say(stream: TextIO | None, text: str) -> None:
    if stream is not None:
        stream.write(text + "\n")
        stream.flush()
