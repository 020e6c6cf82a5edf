"""Which CPU engine runs a model fastest on this machine, by measurement.

``wbc-edge info --probe`` (or :func:`probe` with ``save=True``) runs the model
on ONNX Runtime and on OpenVINO, alternating short timed rounds on the same
batch, and records the median time per image of each in the per-user cache
(``<cache>/cpu-engines.json``, written atomically), keyed by the CPU model,
the thread count and streams, the model file's sha256 and both libraries'
versions.

``Classifier.load(backend="auto")`` on an ONNX model on the CPU then runs
OpenVINO where a probe cached for exactly that key measured it at least
:data:`MARGIN` faster than ONNX Runtime, and ONNX Runtime where the probe says
otherwise. Without a cached probe it follows the CPU's flags, by what was
measured on CPUs of each kind (:func:`engine_by_cpu_flags`): OpenVINO with AMX,
ONNX Runtime without. OpenVINO not installed or a GPU asked for: ONNX Runtime.
It never probes by itself: a probe takes seconds, which a first call should
not pay unasked. The reason for the choice is in
``Classifier.backend_reason``, the report's ``model.backend_reason`` and
``wbc-edge info``.

The cache folder is ``$WBC_EDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/wbc-edge``,
else ``~/.cache/wbc-edge``; OpenVINO's compiled models go in its
``openvino`` folder.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WbcEdgeError
from ..installed import has
from ..metadata import sha256_of
from ..preprocess import default_num_threads
from .streams import streams_for, threads_per_stream

#: OpenVINO is chosen only when it is at least this fraction faster than ONNX Runtime.
MARGIN = 0.05
#: The engines a probe compares, the first being the one kept without a probe.
CPU_ENGINES = ("onnxruntime", "openvino")
PROBE_FILE = "cpu-engines.json"
#: CPU flags of the matrix extensions OpenVINO uses and ONNX Runtime does not (engine_by_cpu_flags).
AMX_FLAGS = frozenset({"amx_int8", "amx_bf16"})
#: x86 extensions with 8-bit dot products that accumulate in 32 bits (VNNI, AMX).
#: Without them the U8S8 kernels of ONNX Runtime and OpenVINO (VPMADDUBSW) add
#: pairs of products in 16 bits, which saturate: docs/measurements.md, "INT8 and
#: the CPU's instructions".
EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
#: Probe defaults: images per timed batch, timed rounds per engine.
PROBE_BATCH = 32
PROBE_ROUNDS = 5

_digests: dict[tuple, str] = {}


def cache_root() -> Path:
    """The per-user cache folder (not created here)."""
    explicit = os.environ.get("WBC_EDGE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "wbc-edge"


def probe_file() -> Path:
    return cache_root() / PROBE_FILE


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere, what platform says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> list[str]:
    """The vector and matrix extensions an engine's speed depends on (part of
    the cache key: virtual machines often report one generic model name)."""
    return list(_read_cpu_flags())


@functools.cache
def _read_cpu_flags() -> tuple[str, ...]:
    """/proc/cpuinfo read once per process (the default precision, the INT8
    check and the engine choice each ask on every load)."""
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
              "amx_int8", "amx_fp16", "avx_vnni", "asimd", "sve", "i8mm", "bf16")
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    present = set(value.split())
                    return tuple(flag for flag in wanted if flag in present)
    except OSError:
        pass
    return ()


def exact_int8(flags: list[str] | None = None, machine: str | None = None) -> bool:
    """Whether this CPU runs the shipped INT8-CPU model (U8S8) as calibrated:
    on x86 only with VNNI or AMX; other architectures have no 16-bit step."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    return bool(set(cpu_flags() if flags is None else flags) & EXACT_INT8_FLAGS)


def model_sha256(path: str | os.PathLike) -> str:
    """The file's sha256, remembered for the process while its size and
    modification time stay the same."""
    info = os.stat(path)
    key = (os.path.realpath(path), info.st_size, info.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256_of(path)
    return _digests[key]


def probe_key(path: str | os.PathLike, num_threads: int | None = None, streams: int | None = None) -> dict[str, Any]:
    """What a probe's result holds for: this CPU, thread count, streams
    (None: the default for the threads), model file and library versions."""
    from ..environment import package_versions

    versions = package_versions()
    threads = int(num_threads or default_num_threads())
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "num_threads": threads,
            "streams": streams_for(streams, threads),
            "model_sha256": model_sha256(path), "onnxruntime": versions.get("onnxruntime"),
            "openvino": versions.get("openvino")}


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


def load_probes(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The cached probes by key; an unreadable cache is an empty one."""
    path = probe_file() if path is None else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    entries = data.get("probes") if isinstance(data, dict) else None
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


def cached_probe(path: str | os.PathLike, num_threads: int | None = None,
                 streams: int | None = None) -> dict[str, Any] | None:
    """The cached probe of this model on this CPU, thread count and streams, or None."""
    if not probe_file().is_file():
        return None
    return load_probes().get(_key_text(probe_key(path, num_threads, streams)))


def winner(timings: dict[str, float]) -> str:
    """The engine to run, from milliseconds per image: OpenVINO only when it
    is at least :data:`MARGIN` faster than ONNX Runtime."""
    ort, ov = timings.get("onnxruntime"), timings.get("openvino")
    if ort is None or ov is None or not ov <= ort * (1 - MARGIN):
        return "onnxruntime"
    return "openvino"


def probe(path: str | os.PathLike, num_threads: int | None = None, *, streams: int | None = None,
          batch_size: int = PROBE_BATCH, rounds: int = PROBE_ROUNDS, save: bool = True) -> dict[str, Any]:
    """Times the model on both CPU engines and returns (and with ``save``,
    caches) ``{"key", "ms_per_image": {engine: ms}, "backend", "measured_at",
    "batch_size", "rounds"}``.

    Both engines load first, with the threads and streams they will run with
    (their first batches, which set them up, are not timed); then ``rounds``
    rounds alternate one timed round on each, one batch per stream at once,
    on the same images, so load from elsewhere on the machine falls on both
    alike; the median round counts.
    """
    from . import load_runner
    from .base import BatchJob

    threads = int(num_threads or default_num_threads())
    streams = streams_for(streams, threads)
    key = probe_key(path, threads, streams)
    runners = {}

    def one_round(runner) -> None:  # a batch per stream, through run_batches as the classifier runs them
        for _ in runner.run_batches(BatchJob(batch_size, lambda out: images) for _ in range(streams)):
            pass

    try:
        for engine in CPU_ENGINES:
            runners[engine] = load_runner(path, backend=engine, num_threads=threads, streams=streams)
        height, width = runners["onnxruntime"].metadata.input_size
        images = np.random.default_rng(0).integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8)
        for runner in runners.values():
            one_round(runner)
        times: dict[str, list[float]] = {engine: [] for engine in runners}
        for _ in range(rounds):
            for engine, runner in runners.items():
                start = time.perf_counter()
                one_round(runner)
                times[engine].append((time.perf_counter() - start) * 1000 / (batch_size * streams))
        inference = runners["openvino"].inference_precision
    finally:
        for runner in runners.values():
            runner.close()
    ms = {engine: round(statistics.median(values), 4) for engine, values in times.items()}
    result = {"key": key, "ms_per_image": ms, "backend": winner(ms), "openvino_inference_precision": inference,
              "margin": MARGIN, "batch_size": batch_size, "rounds": rounds,
              "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if save:
        save_probe(result)
    return result


def save_probe(result: dict[str, Any]) -> Path:
    """Adds (or replaces) one probe in the cache file, written atomically."""
    from ..atomic import write_atomic

    probes = load_probes()
    probes[_key_text(result["key"])] = result
    return write_atomic(probe_file(), json.dumps({"probes": probes}, indent=1, sort_keys=True),
                        make_parents=True)


def choose_cpu_engine(path: str | os.PathLike, num_threads: int | None = None,
                      streams: int | None = None) -> tuple[str, str]:
    """The CPU engine for an ONNX model under ``backend="auto"`` with these
    threads and streams (None: the defaults), and why."""
    if not has("openvino"):
        return "onnxruntime", "an ONNX model runs on onnxruntime (openvino is not installed)"
    try:
        found = cached_probe(path, num_threads, streams)
    except OSError as error:
        return "onnxruntime", f"onnxruntime: the engine probe cache cannot be read ({error})"
    if found is None:
        return engine_by_cpu_flags()
    ms = found.get("ms_per_image", {})
    backend = winner(ms)
    key = found.get("key", {})
    measured = (f"openvino {ms.get('openvino', float('nan')):.3f}, onnxruntime {ms.get('onnxruntime', float('nan')):.3f} "
                f"ms per image, {key.get('num_threads')} threads in {key.get('streams')} stream"
                f"{'s' * (key.get('streams') != 1)}, engine probe of "
                f"{found.get('measured_at', '?')}")
    if backend == "openvino":
        return backend, f"openvino: measured faster than onnxruntime on this CPU ({measured})"
    return backend, (f"onnxruntime: openvino was not measured at least {MARGIN:.0%} faster on this CPU "
                     f"({measured})")


def engine_by_cpu_flags(flags: list[str] | None = None) -> tuple[str, str]:
    """Without a probe: the engine measured faster on CPUs like this one, and why.

    Each branch rests on a measurement (docs/measurements.md, "CPU engines"):
    with AMX (Intel Xeon 4th generation and later) OpenVINO ran the shipped
    INT8 model 1.6-1.8x and the FP32 model 2.5-2.7x as fast as ONNX Runtime;
    without it (an AMD Zen 5 machine) OpenVINO's INT8 was 0.71x, so ONNX
    Runtime stays.
    """
    present = set(cpu_flags() if flags is None else flags)
    amx = sorted(present & AMX_FLAGS)
    if amx:
        return "openvino", (f"openvino: this CPU has AMX ({', '.join(amx)}), where openvino measured faster than "
                            "onnxruntime; no engine probe cached for this model, CPU, thread count and streams "
                            "('wbc-edge info --probe' measures this machine)")
    return "onnxruntime", ("onnxruntime: no engine probe cached for this model, CPU, thread count and streams, and no "
                           "AMX (run 'wbc-edge info --probe' to measure whether openvino is faster here)")


def choose_backend(path: str | os.PathLike, backend: str = "auto", *, device: str | None = None,
                   num_threads: int | None = None, streams: int | None = None,
                   custom_options: bool = False) -> tuple[str, str]:
    """The backend ``Classifier.load`` runs ``path`` on, and why: an explicit
    choice as it is; ``"auto"``: by the file (an engine on TensorRT, a
    checkpoint on torch, a URL on Triton), an ONNX model on the CPU engine
    :func:`choose_cpu_engine` picks (ONNX Runtime where a GPU device or
    runner options for ONNX Runtime are given)."""
    from . import backend_for

    if backend != "auto":
        return backend, f"{backend}: asked for"
    by_file = backend_for(path)
    if by_file != "onnxruntime":
        return by_file, f"{by_file}: the backend that runs this kind of model"
    if device is not None and device.partition(":")[0] != "cpu":
        return "onnxruntime", f"onnxruntime: device {device} asked for"
    if custom_options:
        return "onnxruntime", "onnxruntime: runner options given (they are onnxruntime's)"
    return choose_cpu_engine(path, num_threads, streams)


def cpu_engine_models(model: str | os.PathLike | None = None) -> dict[str, Path]:
    """The ONNX models ``info`` shows the CPU engine choice for: ``model``
    (a file, or a model directory's CPU variants), else the shipped ones."""
    from ..models import folder_models, shipped_models

    if model is None:
        found = shipped_models()
    elif Path(model).is_dir():
        found = folder_models(model)
    elif Path(model).suffix.lower() == ".onnx":
        return {Path(model).name: Path(model)}
    else:
        raise WbcEdgeError(f"{model}: the CPU engines run ONNX models; name an .onnx file or a model directory")
    return {variant: m.path for variant, m in found.items() if variant != "int8-tensorrt"}


def cpu_engine_info(model: str | os.PathLike | None = None, num_threads: int | None = None, *,
                    streams: int | None = None, run_probe: bool = False) -> dict[str, Any]:
    """What ``auto`` runs each CPU model on here with these threads and
    streams (None: the defaults), and why (for ``wbc-edge info``); with
    ``run_probe``, measured now and cached first."""
    threads = int(num_threads or default_num_threads())
    streams = streams_for(streams, threads)
    threads_per_stream(threads, streams)  # refuses more streams than threads before any work
    entries = {}
    for name, path in cpu_engine_models(model).items():
        measured = probe(path, threads, streams=streams) if run_probe and has("openvino") else None
        backend, reason = choose_cpu_engine(path, threads, streams)
        entries[name] = {"path": str(path), "backend": backend, "reason": reason,
                         "probe": measured or (cached_probe(path, threads, streams) if has("openvino") else None)}
    return {"num_threads": threads, "streams": streams, "cache": str(probe_file()), "models": entries}
