"""What this machine can run: package versions, GPUs, usable backends, and
the shipped model. Probes are cheap: versions come from package metadata, the
GPU from ``nvidia-smi`` (or the driver's /proc files, or Jetson's release
file), and a heavy library is imported only where nothing else can answer
(PyTorch's CUDA support, and only when there is a GPU)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .installed import has, installed

# Import name -> the distributions that may provide it, first installed wins.
PACKAGES = {
    "numpy": ("numpy",),
    "pillow": ("pillow", "Pillow"),
    "tqdm": ("tqdm",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "onnx": ("onnx",),
    "openvino": ("openvino",),
    "simplejpeg": ("simplejpeg",),
    "torch": ("torch",),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"),
    "tensorrt_lean": ("tensorrt-lean", "tensorrt-lean-cu13", "tensorrt-lean-cu12",
                      "tensorrt_lean_cu13", "tensorrt_lean_cu12"),
    "cuda-python": ("cuda-python", "cuda-bindings"),
    "nvidia-modelopt": ("nvidia-modelopt",),
}


def package_versions() -> dict[str, str | None]:
    """Installed versions (None: not installed), without importing anything."""
    return {name: _version(*dists) for name, dists in PACKAGES.items()}


def gpu_devices() -> dict[str, Any]:
    """NVIDIA GPUs: ``{"devices": [{"name", "memory_mib", "compute_capability"}],
    "driver": version or None, "source": how they were found, "reason": why
    none when none}``."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total,driver_version,compute_cap", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=15, check=False)
            rows = [[v.strip() for v in line.split(",")] for line in out.stdout.splitlines() if line.strip()]
            if out.returncode == 0 and rows:
                return {
                    "devices": [{"name": r[0], "memory_mib": _int(r[1]), "compute_capability": r[3] if len(r) > 3 else None}
                                for r in rows],
                    "driver": rows[0][2] if len(rows[0]) > 2 else None,
                    "source": "nvidia-smi",
                    "reason": None,
                }
            reason = f"nvidia-smi failed: {(out.stderr or out.stdout).strip()[:200] or f'exit code {out.returncode}'}"
        except (OSError, subprocess.SubprocessError) as error:
            reason = f"nvidia-smi failed: {error}"
    else:
        reason = "no NVIDIA driver found: no nvidia-smi, no /proc/driver/nvidia"
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        names = []
        for info in sorted(proc.glob("*/information")):
            for line in info.read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    names.append(line.split(":", 1)[1].strip())
        if names:
            return {"devices": [{"name": n, "memory_mib": None, "compute_capability": None} for n in names],
                    "driver": _driver_version(), "source": "/proc/driver/nvidia", "reason": None}
    tegra = Path("/etc/nv_tegra_release")
    if tegra.is_file():  # Jetson: an integrated GPU and no nvidia-smi
        release = tegra.read_text(errors="replace").splitlines()[0].strip("# ").strip()
        return {"devices": [{"name": "NVIDIA Jetson (integrated GPU)", "memory_mib": None, "compute_capability": None}],
                "driver": release, "source": str(tegra), "reason": None}
    return {"devices": [], "driver": None, "source": None, "reason": reason}


def backend_status(gpu: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Per backend: ``usable`` (bool), ``reason`` (why not, or a caveat),
    ``install`` (the command that adds what is missing) and details."""
    from .backends import install_hint

    gpu = gpu_devices() if gpu is None else gpu
    has_gpu = bool(gpu["devices"])
    status: dict[str, dict[str, Any]] = {}

    if installed("onnxruntime"):
        try:
            import onnxruntime

            providers = onnxruntime.get_available_providers()
            status["onnxruntime"] = {"usable": True, "reason": None, "providers": providers}
        except Exception as error:  # a broken install (for example both onnxruntime and onnxruntime-gpu)
            status["onnxruntime"] = {"usable": False, "reason": f"onnxruntime fails to import: {error}",
                                     "install": install_hint("onnxruntime")}
    else:
        status["onnxruntime"] = {"usable": False, "reason": "library missing (onnxruntime)",
                                 "install": install_hint("onnxruntime")}

    if installed("openvino"):
        status["openvino"] = {"usable": True, "reason": None, "devices": ["cpu"]}
    else:
        status["openvino"] = {"usable": False, "reason": "library missing (openvino)",
                              "install": install_hint("openvino")}

    if installed("torch"):
        entry: dict[str, Any] = {"usable": True, "reason": None, "devices": ["cpu"]}
        if has_gpu:  # only then is importing PyTorch worth its seconds
            try:
                import torch

                if torch.cuda.is_available():
                    entry["devices"].append("cuda")
                else:
                    entry["reason"] = f"CPU only: this PyTorch ({torch.__version__}) has no CUDA support for this GPU"
            except Exception as error:
                entry = {"usable": False, "reason": f"torch fails to import: {error}", "install": install_hint("torch")}
        status["torch"] = entry
    else:
        status["torch"] = {"usable": False, "reason": "library missing (torch)", "install": install_hint("torch")}

    missing = []
    full, lean = installed("tensorrt"), installed("tensorrt_lean")
    if not full and not lean:
        missing.append("library missing (tensorrt)")
    if not has("cuda-python"):
        missing.append("library missing (cuda-python, for CUDA memory and streams)")
    if not has_gpu:
        missing.append("no NVIDIA GPU")
    entry = {"usable": not missing, "reason": "; ".join(missing) or None,
             "runtime": "tensorrt" if full else ("tensorrt_lean" if lean else None)}
    if not full and lean:
        lean_only = ("the tensorrt package is not installed, only the lean runtime (tensorrt_lean): it runs "
                     "version-compatible engines (build-engine --version-compatible); building engines needs tensorrt")
        entry["reason"] = lean_only if not missing else f"{entry['reason']}; {lean_only}"
    if not full:
        entry["install"] = install_hint("tensorrt")
    status["tensorrt"] = entry
    return status


def default_model_info() -> dict[str, Any] | None:
    """The shipped default model: classes, input size, the precisions shipped
    and their files; None when the install ships none."""
    from .backends.probe import exact_int8
    from .errors import WbcEdgeError
    from .metadata import ModelMetadata
    from .models import VARIANTS, default_precision, make_command, shipped_models

    shipped = shipped_models()
    if not shipped:
        return None
    first = next(iter(shipped.values()))
    meta = ModelMetadata.load(first.metadata_path)
    variants = {}
    for variant, model in shipped.items():
        variants[variant] = {
            "precision": model.precision,
            "path": str(model.path),
            "metadata": str(model.metadata_path),
            "size_mb": round(model.path.stat().st_size / 1e6, 1),
        }
    try:
        cpu_default = default_precision("onnxruntime")
    except WbcEdgeError:
        cpu_default = None
    return {
        "name": meta.name,
        "classes": list(meta.classes),
        "input_size": list(meta.input_size),
        "resize_policy": meta.resize_policy,
        "temperature": meta.temperature,
        "precisions": sorted({m.precision for m in shipped.values()}, key=["fp32", "fp16", "int8"].index),
        "default_precision_cpu": cpu_default,
        "int8_cpu_exact_here": exact_int8(),
        "variants": variants,
        "not_shipped": {v: make_command(v) for v in VARIANTS if v not in shipped},
    }


def describe_environment() -> dict[str, Any]:
    """Everything ``wbc-edge info --json`` prints."""
    from . import __version__
    from .preprocess import default_num_threads

    gpu = gpu_devices()
    return {
        "wbc_edge": {"version": __version__, "location": str(Path(__file__).resolve().parent)},
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": {"cores": os.cpu_count(), "usable": default_num_threads(), "machine": platform.machine()},
        "packages": package_versions(),
        "gpu": gpu,
        "backends": backend_status(gpu),
        "default_model": default_model_info(),
    }


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _driver_version() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text(errors="replace")
    except OSError:
        return None
    for word in text.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            return word
    return None


def _int(value: str) -> int | None:
    try:
        return int(float(value))
    except ValueError:
        return None
