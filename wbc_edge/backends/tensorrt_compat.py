"""Where a TensorRT engine may run: the engine record kept in its JSON, and
the rules that compare it with the GPU and TensorRT found at load time.

A TensorRT engine (plan) runs only on the TensorRT version that built it and
on the GPU architecture it was built for, unless it was built
version-compatible (``BuilderFlag.VERSION_COMPATIBLE``, then also runnable by
the lean runtime and by later TensorRT versions) or hardware-compatible
(``HardwareCompatibilityLevel``). TensorRT itself fails late and cryptically
on a mismatch ("Serialization assertion ... failed"); these checks refuse
early and say what to do. Pure Python: no TensorRT or GPU needed to test them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MetadataError, ModelMismatchError, WbcEdgeError
from ..installed import has, installed, module_spec
from ..metadata import ModelMetadata

INSTALL_TENSORRT = "pip install 'wbc-edge[tensorrt]'"
INSTALL_LEAN = "pip install 'wbc-edge[tensorrt-lean]'"
NEEDS_GPU = "an NVIDIA GPU with its driver (check with nvidia-smi)"

#: --hardware-compatible choices -> TensorRT's HardwareCompatibilityLevel member
HARDWARE_LEVELS = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``."""
    parts = re.findall(r"\d+", str(text))
    if not parts:
        raise MetadataError(f"not a TensorRT version: {text!r}")
    return tuple(int(p) for p in parts)


def parse_compute_capability(text) -> tuple[int, int]:
    """``"8.9"`` (or ``[8, 9]``) -> ``(8, 9)``."""
    if isinstance(text, (list, tuple)) and len(text) == 2:
        return int(text[0]), int(text[1])
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(text))
    if not match:
        raise MetadataError(f"compute capability must look like '8.9', got {text!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class EngineRecord:
    """The ``tensorrt`` part of an engine's metadata: how and where it was built."""

    version: str                      # TensorRT that built it, e.g. "10.3.0.30"
    gpu_name: str                     # e.g. "NVIDIA L4"
    compute_capability: str           # e.g. "8.9"
    min_batch: int
    opt_batch: int
    max_batch: int
    input_name: str = "input"
    output_name: str = "logits"
    version_compatible: bool = False  # runnable by later TensorRT and by tensorrt_lean
    exclude_lean_runtime: bool = False  # the plan does not carry its own lean runtime
    hardware_compatibility: str = "none"  # one of HARDWARE_LEVELS
    profiles: int = 1                 # identical optimization profiles: batches the runtime may run at once
    engine_sha256: str | None = None
    workspace_mb: int | None = None
    build_seconds: float | None = None

    def __post_init__(self):
        parse_version(self.version)
        parse_compute_capability(self.compute_capability)
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise MetadataError(f"batch profile must satisfy 1 <= min <= opt <= max, got "
                                f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        if isinstance(self.profiles, bool) or not isinstance(self.profiles, int) or self.profiles < 1:
            raise MetadataError(f"profiles must be a positive integer, got {self.profiles!r}")
        if self.hardware_compatibility not in HARDWARE_LEVELS:
            raise MetadataError(f"hardware_compatibility must be one of {sorted(HARDWARE_LEVELS)}, "
                                f"got {self.hardware_compatibility!r}")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise MetadataError("exclude_lean_runtime applies only to version-compatible engines")

    @property
    def embeds_lean_runtime(self) -> bool:
        return self.version_compatible and not self.exclude_lean_runtime

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineRecord:
        if not isinstance(data, dict):
            raise MetadataError("the 'tensorrt' entry must be an object")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [name for name, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise MetadataError(f"the 'tensorrt' entry lacks {', '.join(missing)}")
        try:
            values = {k: v for k, v in data.items() if k in fields}
            for name in ("min_batch", "opt_batch", "max_batch"):
                values[name] = _integer(values[name], name)
            for name in ("version_compatible", "exclude_lean_runtime"):
                if name in values and not isinstance(values[name], bool):
                    raise MetadataError(f"'{name}' must be true or false, got {values[name]!r}")
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise MetadataError(f"invalid 'tensorrt' entry: {error}") from None

    @classmethod
    def of(cls, meta: ModelMetadata, where: str = "engine") -> EngineRecord:
        """The record of an engine's metadata; MetadataError if it is not an engine's."""
        if meta.format != "engine":
            raise MetadataError(f"{where}: metadata is for a {meta.format!r} artifact, not an engine "
                                "(was the ONNX model's JSON copied beside the engine?)")
        if not meta.tensorrt:
            raise MetadataError(f"{where}: metadata has no 'tensorrt' entry; engines made by "
                                "'wbc-edge build-engine' have one")
        try:
            return cls.from_dict(meta.tensorrt)
        except MetadataError as error:
            raise MetadataError(f"{where}: {error}") from None


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MetadataError(f"'{name}' must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class RuntimeFacts:
    """The TensorRT and GPU found at load time."""

    tensorrt_version: str
    lean: bool                       # tensorrt_lean rather than the full tensorrt
    gpu_name: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class Verdict:
    """May the engine run here, and how."""

    allow_host_code: bool            # the plan carries a lean runtime that TensorRT must load
    warnings: tuple[str, ...] = ()


def check_engine(record: EngineRecord, here: RuntimeFacts, *, strict_gpu: bool = True,
                 where: str = "engine") -> Verdict:
    """Refuses, with ModelMismatchError saying what to do, an engine that
    cannot (or should not) run on this TensorRT and GPU."""
    rebuild = "rebuild it on this machine with 'wbc-edge build-engine'"
    warnings: list[str] = []
    runtime = f"the lean runtime (tensorrt_lean {here.tensorrt_version})" if here.lean \
        else f"TensorRT {here.tensorrt_version}"

    # -- TensorRT version --------------------------------------------------------
    if here.lean and not record.version_compatible:
        raise ModelMismatchError(
            f"{where} was not built version-compatible, and the lean runtime (tensorrt_lean) runs only "
            f"version-compatible engines: rebuild it with 'wbc-edge build-engine --version-compatible', "
            f"or install the full TensorRT ({INSTALL_TENSORRT})")
    built, running = parse_version(record.version), parse_version(here.tensorrt_version)
    if built != running:
        if not record.version_compatible:
            raise ModelMismatchError(
                f"{where} was built with TensorRT {record.version} and this is {runtime}: an engine runs only on "
                f"the TensorRT version that built it, unless built with --version-compatible; {rebuild}")
        if running[:3] < built[:3]:
            raise ModelMismatchError(
                f"{where} was built with TensorRT {record.version}, newer than {runtime}: a version-compatible "
                f"engine runs on the version that built it or later ones, never older; upgrade TensorRT or {rebuild}")
        if record.exclude_lean_runtime:
            raise ModelMismatchError(
                f"{where} was built with TensorRT {record.version} without its lean runtime "
                f"(--exclude-lean-runtime), so it needs exactly that version's runtime, and this is {runtime}; "
                f"install TensorRT {record.version} or rebuild without --exclude-lean-runtime")
        warnings.append(f"{where} was built with TensorRT {record.version} and runs on {runtime} through its "
                        "version compatibility (it may be slower than an engine built for this version)")

    # -- GPU ------------------------------------------------------------------------
    built_cc = parse_compute_capability(record.compute_capability)
    gpu_here = f"{here.gpu_name} (compute capability {here.compute_capability[0]}.{here.compute_capability[1]})"
    gpu_built = f"{record.gpu_name} (compute capability {record.compute_capability})"
    level = record.hardware_compatibility
    if level == "ampere+":
        if here.compute_capability < (8, 0):
            raise ModelMismatchError(
                f"{where} was built for Ampere and newer GPUs (--hardware-compatible ampere+), and this GPU is "
                f"{gpu_here}, older than Ampere; {rebuild}")
    elif here.compute_capability != built_cc:
        raise ModelMismatchError(
            f"{where} was built on {gpu_built} and this GPU is {gpu_here}: engines do not move between GPU "
            f"architectures; {rebuild}, or build it with --hardware-compatible ampere+ to run on any Ampere or "
            "newer GPU")
    elif level == "none" and here.gpu_name != record.gpu_name:
        message = (f"{where} was built on {record.gpu_name} and this GPU is {here.gpu_name} (same compute "
                   f"capability {record.compute_capability}): TensorRT tunes an engine for the GPU model that "
                   "built it, and it may run slower or fail on another")
        if strict_gpu:
            raise ModelMismatchError(f"{message}; {rebuild}, build it with --hardware-compatible same-cc, "
                                     "or load it with strict_gpu=False to accept this")
        warnings.append(message)

    return Verdict(allow_host_code=record.embeds_lean_runtime, warnings=tuple(warnings))


def check_plan_digest(plan: bytes, record: EngineRecord, where: str = "engine") -> None:
    """Refuses an engine file whose sha256 is not the one its JSON recorded
    (the JSON would describe another engine: other classes, GPU or version)."""
    if record.engine_sha256 and hashlib.sha256(plan).hexdigest() != record.engine_sha256:
        raise ModelMismatchError(
            f"{where}: the engine does not match its JSON (sha256 differs): one of the two was replaced after "
            "'wbc-edge build-engine' wrote them; rebuild the engine, or put its own JSON beside it")


# --- the CUDA driver ------------------------------------------------------------


def tensorrt_cuda_major(module: str) -> int | None:
    """The CUDA major version a pip-installed TensorRT was built for, read from
    the name of its ``.dist-info`` beside it (``tensorrt_cu13_bindings``,
    ``tensorrt_lean_cu13`` -> 13); None where no name says (JetPack's Debian
    packages). Looks only beside the module: importlib.metadata's
    packages_distributions() reads every installed package (0.1-0.5 s here)."""
    spec = module_spec(module)
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent  # site-packages, or the package's own folder in it
    if spec.submodule_search_locations is not None:
        folder = folder.parent
    for info in sorted(folder.glob(f"{module}_cu*.dist-info")):
        match = re.match(rf"{re.escape(module)}_cu(\d+)(?:_[a-z]+)?-", info.name)
        if match:
            return int(match.group(1))
    return None


def check_driver(cuda_major: int | None, driver_version: int, what: str = "TensorRT") -> None:
    """Refuses a driver older than the CUDA that TensorRT was built for
    (``driver_version`` as cudaDriverGetVersion gives it: 12080 for 12.8).

    TensorRT links its CUDA runtime statically: under an older driver it still
    hands back a Runtime or Builder, only logging "CUDA driver version is
    insufficient", and that object crashes the process when used or freed.
    """
    if cuda_major is None or driver_version // 1000 >= cuda_major:
        return
    message = (f"{what} was built for CUDA {cuda_major} and needs an NVIDIA driver for CUDA {cuda_major} or "
               "newer; ")
    if not driver_version:
        raise WbcEdgeError(message + f"no NVIDIA driver was found: install one ({NEEDS_GPU})")
    major, minor = driver_version // 1000, driver_version % 1000 // 10
    raise WbcEdgeError(message + f"this driver supports CUDA {major}.{minor}: update the driver (nvidia-smi "
                       f"shows the CUDA version it supports), or install TensorRT built for CUDA {major} "
                       f"(the tensorrt-cu{major} packages)")


def check_driver_for(trt, driver_version: int) -> None:
    """:func:`check_driver` for an imported ``tensorrt`` or ``tensorrt_lean``."""
    what = "TensorRT" if trt.__name__ == "tensorrt" else trt.__name__
    check_driver(tensorrt_cuda_major(trt.__name__), driver_version, f"{what} {trt.__version__}")


# --- what is installed -------------------------------------------------------


def missing_for(purpose: str) -> list[str]:
    """What this machine lacks to build engines (``purpose="build"``) or run
    them (``"run"``, ``"run-lean"``): an empty list when nothing is missing."""
    missing = []
    if purpose == "build" and not installed("tensorrt"):
        missing.append("TensorRT with its builder (the 'tensorrt' Python package; on Jetson it comes with JetPack)")
    elif purpose == "run" and not (installed("tensorrt") or installed("tensorrt_lean")):
        missing.append("TensorRT (the 'tensorrt' or 'tensorrt_lean' Python package)")
    elif purpose == "run-lean" and not installed("tensorrt_lean"):
        missing.append("the TensorRT lean runtime (the 'tensorrt_lean' Python package)")
    if not has("cuda-python"):
        missing.append("cuda-python (the 'cuda-bindings' package)")
    else:
        from . import cuda

        try:
            if cuda.device_count() < 1:
                missing.append("an NVIDIA GPU (the driver sees none)")
        except cuda.NoDriverError:
            missing.append("an NVIDIA GPU and its driver (no driver is installed: nvidia-smi would show it)")
        except cuda.CudaError as error:
            which = "" if error.hint == cuda.NO_DEVICE_HINT else error.hint  # e.g. the wheels that fit the driver
            missing.append(f"an NVIDIA GPU with its driver (CUDA says {error.name}: {error.text}{which})")
    return missing
