"""The shipped default model and its precision variants.

The package ships one model in up to four forms, side by side in this folder::

    default.<variant>.onnx   the model
    default.<variant>.json   its metadata (classes, input size, temperature, ...)

=================  =========  ==========================================================
variant            precision  for
=================  =========  ==========================================================
``fp32``           fp32       the reference; any backend that runs ONNX
``fp16``           fp16       TensorRT (build an engine from it); slow on CPUs
``int8-cpu``       int8       onnxruntime/OpenVINO on x86 CPUs with VNNI or AMX (U8S8)
``int8-tensorrt``  int8       TensorRT (symmetric Q/DQ; build an engine from it)
=================  =========  ==========================================================

Which variants an install holds depends on the size budget and the build, so
every lookup here works with whatever exists and says which command makes a
missing one. TensorRT engines are never shipped: they belong to one GPU model
and TensorRT version, and ``wbc-edge build-engine`` makes them on the analyzer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelMismatchError, WbcEdgeError
from ..metadata import ModelMetadata

MODELS_DIR = Path(__file__).resolve().parent
DEFAULT_NAME = "default"
VARIANTS = ("fp32", "fp16", "int8-cpu", "int8-tensorrt")

# The precision of each variant.
_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8-cpu": "int8", "int8-tensorrt": "int8"}

# The default precision per backend, best first; the first shipped one wins.
# onnxruntime on a CPU: INT8 for CPUs is the fastest (docs/measurements.md) within
# the INT8 parity targets where the CPU has VNNI or AMX (else FP32: default_precision); FP16 is last because
# CPUs emulate it (slower than FP32). TensorRT: INT8, then FP16, then FP32.
_PREFERENCE = {
    "onnxruntime": ("int8", "fp32", "fp16"),
    "tensorrt": ("int8", "fp16", "fp32"),
}


@dataclass(frozen=True)
class ShippedModel:
    """One shipped variant of the default model."""

    variant: str
    path: Path
    metadata_path: Path

    @property
    def precision(self) -> str:
        return _PRECISION[self.variant]


def variant_path(variant: str) -> Path:
    """Where a variant lives (whether or not it is shipped in this install)."""
    if variant not in VARIANTS:
        raise WbcEdgeError(f"unknown model variant {variant!r}; variants are {', '.join(VARIANTS)}")
    return MODELS_DIR / f"{DEFAULT_NAME}.{variant}.onnx"


def shipped_models() -> dict[str, ShippedModel]:
    """The variants present in this install (model and metadata both), in
    :data:`VARIANTS` order."""
    return folder_models(MODELS_DIR, DEFAULT_NAME)


def folder_models(folder: str | os.PathLike, name: str | None = None) -> dict[str, ShippedModel]:
    """The variants in a model directory (this package's, or one that
    ``wbc-edge adapt`` made): ``NAME.<variant>.onnx`` with its ``.json``, in
    :data:`VARIANTS` order. ``name`` None: whatever name the directory uses
    (it must use one)."""
    folder = Path(folder)
    found = {}
    for variant in VARIANTS:
        candidates = [folder / f"{name}.{variant}.onnx"] if name else sorted(folder.glob(f"*.{variant}.onnx"))
        present = [p for p in candidates if p.is_file() and p.with_suffix(".json").is_file()]
        if len(present) > 1:
            raise WbcEdgeError(f"{folder}: more than one {variant} model ({', '.join(p.name for p in present)}); "
                               "a model directory holds one model")
        if present:
            found[variant] = ShippedModel(variant, present[0], present[0].with_suffix(".json"))
    return found


def variant_for(precision: str, backend: str) -> str:
    """The shipped variant that gives ``precision`` on ``backend``."""
    if precision not in ("fp32", "fp16", "int8"):
        raise WbcEdgeError(f"unknown precision {precision!r}; choose fp32, fp16 or int8")
    if precision != "int8":
        return precision
    return "int8-tensorrt" if backend == "tensorrt" else "int8-cpu"


def default_precision(backend: str = "onnxruntime", shipped: dict[str, ShippedModel] | None = None) -> str:
    """The precision used when none is asked for: the fastest shipped one for
    the backend (on CPU: INT8 if ``int8-cpu`` is shipped and this CPU runs it
    exactly, else FP32)."""
    shipped = shipped_models() if shipped is None else shipped
    for precision in _PREFERENCE.get(backend, _PREFERENCE["onnxruntime"]):
        variant = variant_for(precision, backend)
        if variant in shipped and (variant != "int8-cpu" or _exact_int8()):
            return precision
    raise _no_default_model()


def _exact_int8() -> bool:
    from ..backends.probe import exact_int8

    return exact_int8()


#: What loading an INT8-CPU model on a CPU without VNNI or AMX is told (Classifier.load).
INEXACT_INT8_WARNING = (
    "this CPU has no VNNI or AMX, so the INT8-CPU model's 8-bit products saturate here and its answers can "
    "differ from FP32's (measured on an AVX2-only CPU: 11 of 208 sample cells with onnxruntime, 29 with "
    "openvino; docs/measurements.md); the default on such a CPU is FP32 (--precision fp32)"
)


def warn_if_inexact_int8(metadata: ModelMetadata, backend: str) -> None:
    """Warns when a U8S8 model made for CPUs runs where it saturates."""
    target = (metadata.quantization or {}).get("target")
    if (backend in ("onnxruntime", "openvino") and metadata.precision == "int8" and target == "cpu"
            and not _exact_int8()):
        import warnings

        warnings.warn(INEXACT_INT8_WARNING, stacklevel=3)


def resolve_model(model: str | os.PathLike | None = None, precision: str | None = None,
                  backend: str = "auto") -> Path:
    """The model file to load.

    ``model`` a directory (made by ``wbc-edge adapt``): its variant for
    ``precision`` on ``backend``, chosen as for the shipped model.

    ``model`` a file: that file (which must exist); ``precision`` may not also
    be given unless ``model`` is a PyTorch checkpoint (whose FP16 is computed at
    run time): an ONNX model or engine has its precision built in.

    ``model`` a URL (``grpc://host:8001/name``, ``http://...``): returned as
    it is, for the Triton backend.

    ``model=None``: the shipped variant for ``precision`` on ``backend``
    (``auto`` and ``onnxruntime``: the ONNX variants; ``tensorrt``: an engine
    must be built first, and the error says how).

    Raises:
        WbcEdgeError: saying what is missing and the command that makes it.
    """
    if isinstance(model, str) and model.split("://", 1)[0].lower() in ("grpc", "http", "https") and "://" in model:
        return model  # a model on a Triton server (wbc_edge.backends.triton): passed through as it is
    if model is not None:
        path = Path(model)
        if not path.exists():
            raise WbcEdgeError(f"{path}: model file not found")
        if path.is_dir():
            return _directory_variant(path, precision, backend)
        if precision is not None and path.suffix.lower() not in (".pt", ".pth"):
            raise WbcEdgeError(
                f"--precision picks a shipped variant of the default model, but {path.name} already has its "
                "precision built in; pass either a model or a precision"
            )
        return path

    if backend == "torch":
        # PyTorch rebuilds the network from the FP32 ONNX (BatchNorm unfolded,
        # state_dict names: wbc_edge.training.from_onnx); fp16 is applied at run time.
        shipped = shipped_models()
        if "fp32" not in shipped:
            raise _no_default_model()
        return shipped["fp32"].path
    target = "tensorrt" if backend == "tensorrt" else "onnxruntime"
    if precision is None:
        precision = default_precision(target)
    variant = variant_for(precision, target)
    shipped = shipped_models()
    if target == "tensorrt":
        onnx = shipped[variant].path if variant in shipped else variant_path(variant)
        made = "" if variant in shipped else f" (first make {onnx.name}: {make_command(variant)})"
        raise WbcEdgeError(
            "TensorRT runs engines, which are built on (and for) the GPU they run on, so none is shipped. "
            f"Build one from the shipped {variant} model{made}:\n"
            f"  wbc-edge build-engine --onnx {onnx} --out default.{precision}.engine\n"
            f"then pass it: --model default.{precision}.engine (Classifier.load('default.{precision}.engine'))"
        )
    if variant not in shipped:
        if not shipped:
            raise _no_default_model()
        raise WbcEdgeError(
            f"the {precision} variant of the default model ({variant}) is not shipped in this install "
            f"(shipped: {', '.join(shipped)}). Make it with:\n  {make_command(variant)}\n"
            f"and pass it with --model (Classifier.load(model=...))"
        )
    return shipped[variant].path


def _directory_variant(folder: Path, precision: str | None, backend: str) -> Path:
    """The file of a model directory that runs ``precision`` on ``backend``."""
    present = folder_models(folder)
    if not present:
        raise WbcEdgeError(f"{folder}: is a directory without a model: pass a model file (.onnx, .engine, .pt) "
                           "or a model directory made by 'wbc-edge adapt' (NAME.fp32.onnx with NAME.fp32.json)")
    if backend == "torch":
        if "fp32" not in present:
            raise WbcEdgeError(f"{folder}: has no fp32 model, which the torch backend needs")
        return present["fp32"].path
    target = "tensorrt" if backend == "tensorrt" else "onnxruntime"
    if precision is None:
        precision = default_precision(target, present)
    variant = variant_for(precision, target)
    if target == "tensorrt":
        onnx = present.get(variant, present.get("fp32")).path
        raise WbcEdgeError(f"TensorRT runs engines built on the GPU they run on: build one from {onnx} with\n"
                           f"  wbc-edge build-engine --onnx {onnx} --out {onnx.with_suffix('.engine').name}")
    if variant not in present:
        raise WbcEdgeError(f"{folder}: has no {variant} model (it has: {', '.join(present)})")
    return present[variant].path


def make_command(variant: str) -> str:
    """The command that makes a variant from the FP32 model."""
    fp32 = variant_path("fp32")
    out = f"default.{variant}.onnx"
    if variant == "fp32":
        return "wbc-edge export --checkpoint CHECKPOINT --weight-storage fp16 --out default.fp32.onnx"
    if variant == "fp16":
        # With the manifest, only split=train images are read.
        return (f"wbc-edge calibrate --onnx {fp32} --precision fp16 "
                f"--data DATA --manifest DATA/manifest.csv --out {out}")
    target = "cpu" if variant == "int8-cpu" else "tensorrt"
    return (f"wbc-edge calibrate --onnx {fp32} --precision int8 --target {target} "
            f"--data DATA --manifest DATA/manifest.csv --out {out}")


def _no_default_model() -> WbcEdgeError:
    return WbcEdgeError(
        f"no default model is shipped in this install ({MODELS_DIR} holds no default.<variant>.onnx with its "
        f".json); reinstall wbc-edge, or pass a model file (--model PATH, Classifier.load(model=...))"
    )


def shipped_variant(path: str | os.PathLike) -> str | None:
    """The shipped variant at ``path`` (None: not a shipped model)."""
    where = os.path.abspath(path)  # not resolve(): a variant may be a link to another file
    for variant, shipped in shipped_models().items():
        if os.path.abspath(shipped.path) == where:
            return variant
    return None


def verify_shipped(meta: ModelMetadata, variant: str) -> None:
    """A shipped variant must say the precision its name says, and mean the
    same as the FP32 reference (classes, input size, normalization)."""
    shipped = shipped_models()
    expected = shipped[variant].precision
    if meta.precision != expected:
        raise ModelMismatchError(f"{shipped[variant].path}: the {variant} model's metadata says precision "
                                 f"{meta.precision}, expected {expected}; reinstall wbc-edge")
    if variant != "fp32" and "fp32" in shipped:
        meta.check_compatible(ModelMetadata.load(shipped["fp32"].metadata_path),
                              what=f"{shipped[variant].path} vs the fp32 model")
