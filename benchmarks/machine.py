"""What a measurement ran on: CPU, cores and affinity, load, GPU, library
versions, date and git commit; recorded with every results file."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Distributions whose versions are recorded (when installed).
LIBRARIES = ("wbc-edge", "numpy", "pillow", "onnxruntime", "onnxruntime-gpu", "torch", "onnx",
             "tensorrt", "tensorrt-lean", "tensorrt-cu13", "tensorrt-lean-cu13", "cuda-bindings",
             "pytest-benchmark")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> dict[str, object]:
    """The checked-out commit and whether the working tree differs from it."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def gpu_info() -> dict[str, object] | None:
    """The CUDA device PyTorch sees, if torch is already imported and sees one
    (importing torch here just to ask would slow every run)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "count": torch.cuda.device_count()}


def thread_settings() -> dict[str, object]:
    """Thread counts the libraries will use, and environment overrides."""
    import sys

    settings: dict[str, object] = {
        name: os.environ[name] for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
        if name in os.environ
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        settings["torch_threads"] = torch.get_num_threads()
        settings["torch_interop_threads"] = torch.get_num_interop_threads()
    return settings


def describe_machine() -> dict[str, object]:
    """Everything recorded about the machine, at the time of the call."""
    affinity = cpu_affinity()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity": affinity,
        "cores_used": len(affinity),
        "load_average": load_average(),
        "memory_gib": memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "threads": thread_settings(),
        "gpu": gpu_info(),
        "git": git_commit(),
    }


def short_machine(machine: dict) -> str:
    """A one-line name for tables: ``AMD EPYC, 2 cores`` or ``NVIDIA H100 (AMD EPYC, 16 cores)``."""
    cpu = f"{machine.get('cpu', '?')}, {machine.get('cores_used', '?')} cores"
    gpu = machine.get("gpu")
    return f"{gpu['name']} ({cpu})" if gpu else cpu
