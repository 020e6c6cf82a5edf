"""Shared setup of the benchmark suite: run settings (full or ``--quick``), the
images, the prototype and the ``measure`` fixture that times a callable with
pytest-benchmark and records the result; the results file is written when the
session ends.

Options (each also read from an environment variable, for CI):

    --quick                 smoke run: few images, few rounds   (WBC_EDGE_BENCH_QUICK=1)
    --bench-out PATH        where to write the results JSON     (WBC_EDGE_BENCH_OUT)
    --checkpoint PATH       prototype and torch-backend weights (WBC_EDGE_BENCH_CHECKPOINT);
                            default: rebuilt from the shipped FP32 ONNX model
    --batches 1,8,32,128    inference batch sizes               (WBC_EDGE_BENCH_BATCHES)
    --threads N             cap every library at N threads: PyTorch (the prototype and the torch
                            backend), onnxruntime, decoding and preprocessing (WBC_EDGE_BENCH_THREADS);
                            default: each library's own default (all CPUs)
"""

from __future__ import annotations

import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from benchmarks.machine import describe_machine, load_average
from benchmarks.results import Measurement, default_path, results_document, write_results
from benchmarks.workload import PBC_ENV, ImageSet, cell_images
from wbc_edge.preprocess import default_num_threads


@dataclass(frozen=True)
class Settings:
    """How much each benchmark runs."""

    mode: str
    #: images preprocessed (and decoded) per round
    preprocess_images: int
    preprocess_rounds: int
    #: images classified per end-to-end round, and rounds
    e2e_images: int
    e2e_rounds: int
    #: inference: batch sizes, and rounds chosen to fill about seconds_per_case
    batches: tuple[int, ...]
    seconds_per_case: float
    min_rounds: int
    max_rounds: int
    #: every library's thread cap; None: each library's default (all CPUs)
    threads: int | None = None

    def rounds_for(self, seconds_per_call: float) -> int:
        wanted = math.ceil(self.seconds_per_case / max(seconds_per_call, 1e-9))
        return int(min(self.max_rounds, max(self.min_rounds, wanted)))


FULL = Settings(mode="full", preprocess_images=256, preprocess_rounds=10, e2e_images=1000, e2e_rounds=3,
                batches=(1, 8, 32, 128), seconds_per_case=10.0, min_rounds=5, max_rounds=300)
QUICK = Settings(mode="quick", preprocess_images=24, preprocess_rounds=4, e2e_images=24, e2e_rounds=1,
                 batches=(1, 8), seconds_per_case=0.2, min_rounds=2, max_rounds=4)


def pytest_addoption(parser):
    group = parser.getgroup("wbc-edge benchmarks")
    group.addoption("--quick", action="store_true", default=None,
                    help="smoke run: few images and rounds (env WBC_EDGE_BENCH_QUICK=1)")
    group.addoption("--bench-out", default=None, help="results JSON path (env WBC_EDGE_BENCH_OUT); "
                                                      "default: benchmarks/results/DATE-HOST.json")
    group.addoption("--checkpoint", default=None,
                    help="weights for the prototype and the torch backend (env WBC_EDGE_BENCH_CHECKPOINT); "
                         "default: rebuilt from the shipped FP32 ONNX model")
    group.addoption("--batches", default=None, help="inference batch sizes, e.g. 1,8,32,128 (env WBC_EDGE_BENCH_BATCHES)")
    group.addoption("--threads", default=None, help="cap PyTorch, onnxruntime, decoding and preprocessing at N threads "
                                                    "(env WBC_EDGE_BENCH_THREADS); default: all CPUs")


def _option(config, name: str, env: str):
    value = config.getoption(name)
    return value if value is not None else os.environ.get(env) or None


@dataclass
class ResultsLog:
    """What the session measured, written to the results file at its end."""

    settings: Settings
    measurements: list[Measurement] = field(default_factory=list)
    workload: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: labels per input for each end-to-end path, to report agreement with the prototype
    labels: dict[str, list] = field(default_factory=dict)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


_LOG_KEY = pytest.StashKey[ResultsLog]()


def pytest_configure(config):
    quick = _option(config, "quick", "WBC_EDGE_BENCH_QUICK")
    settings = QUICK if quick and str(quick).lower() not in ("0", "false", "no") else FULL
    batches = _option(config, "batches", "WBC_EDGE_BENCH_BATCHES")
    if batches:
        try:
            sizes = tuple(int(b) for b in str(batches).split(","))
        except ValueError:
            raise pytest.UsageError(f"--batches: expected comma-separated integers, got {batches!r}") from None
        if not sizes or min(sizes) < 1:
            raise pytest.UsageError(f"--batches: sizes must be positive, got {batches!r}")
        settings = Settings(**{**settings.__dict__, "batches": sizes})
    threads = _option(config, "threads", "WBC_EDGE_BENCH_THREADS")
    if threads:
        if not str(threads).isdigit() or int(threads) < 1:
            raise pytest.UsageError(f"--threads: expected a positive integer, got {threads!r}")
        settings = Settings(**{**settings.__dict__, "threads": int(threads)})
    log = ResultsLog(settings)
    # Other work on the machine distorts every ratio: record how busy it was before we began.
    log.workload["load_average_at_start"] = load_average()
    log.workload["threads_cap"] = settings.threads
    config.stash[_LOG_KEY] = log


def pytest_generate_tests(metafunc):
    """A test taking ``batch`` runs once per inference batch size."""
    if "batch" in metafunc.fixturenames:
        batches = metafunc.config.stash[_LOG_KEY].settings.batches
        metafunc.parametrize("batch", batches, ids=[f"batch{b}" for b in batches])


def pytest_sessionfinish(session, exitstatus):
    log = session.config.stash.get(_LOG_KEY, None)
    if log is None or not log.measurements:
        return
    config = session.config
    machine = describe_machine()
    env = f"{PBC_ENV}={shlex.quote(os.environ[PBC_ENV])} " if os.environ.get(PBC_ENV) else ""
    command = env + "python -m pytest " + " ".join(shlex.quote(a) for a in config.invocation_params.args)
    document = results_document(log.measurements, mode=log.settings.mode, command=command, machine=machine,
                                workload=log.workload, notes=log.notes)
    out = _option(config, "bench_out", "WBC_EDGE_BENCH_OUT")
    path = write_results(document, Path(out) if out else default_path(log.settings.mode, machine))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"wbc-edge benchmark results: {path}  (table: python -m benchmarks.report {path})")


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def results_log(pytestconfig) -> ResultsLog:
    return pytestconfig.stash[_LOG_KEY]


@pytest.fixture(scope="session")
def settings(results_log) -> Settings:
    return results_log.settings


@pytest.fixture(scope="session")
def all_threads(settings) -> int:
    """'All threads' for the SDK: the --threads cap, else every CPU this process may use."""
    return settings.threads or default_num_threads()


@pytest.fixture(scope="session")
def torch_threads(settings):
    """PyTorch, with its thread count capped where --threads says (the default:
    PyTorch's own, as the prototype would run)."""
    torch = pytest.importorskip("torch", reason="PyTorch is needed: pip install 'wbc-edge[torch]'")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return torch.get_num_threads()


def _warm_file_cache(images: ImageSet) -> None:
    """Reads every file once so that no timed path pays the first disk read."""
    for path in set(images.paths):
        path.read_bytes()


@pytest.fixture(scope="session")
def preprocess_images(settings, results_log) -> ImageSet:
    images = cell_images(settings.preprocess_images)
    _warm_file_cache(images)
    results_log.workload["preprocess"] = images.describe()
    return images


@pytest.fixture(scope="session")
def decoded_images(preprocess_images) -> list[np.ndarray]:
    from benchmarks.prototype import prototype_decode

    return prototype_decode(preprocess_images.paths)


@pytest.fixture(scope="session")
def e2e_images(settings, results_log) -> ImageSet:
    images = cell_images(settings.e2e_images)
    _warm_file_cache(images)
    results_log.workload["end_to_end"] = images.describe()
    if images.distinct < len(images.paths):
        results_log.note(f"end to end: {images.note}")
    return images


@pytest.fixture(scope="session")
def checkpoint(pytestconfig) -> Path | None:
    value = _option(pytestconfig, "checkpoint", "WBC_EDGE_BENCH_CHECKPOINT")
    if value and not Path(value).is_file():
        raise pytest.UsageError(f"--checkpoint {value}: file not found")
    return Path(value) if value else None


@pytest.fixture(scope="session")
def fp32_onnx() -> Path:
    from wbc_edge.models import make_command, variant_path

    path = variant_path("fp32")
    if not path.is_file():
        pytest.skip(f"the shipped FP32 model {path} is missing: make it with {make_command('fp32')}")
    return path


@pytest.fixture(scope="session")
def model_metadata(fp32_onnx):
    """The shipped FP32 model's metadata: input size, normalization, classes."""
    import onnx

    from wbc_edge.metadata import ONNX_METADATA_KEY, resolve_metadata

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    embedded = {p.key: p.value for p in model.metadata_props}.get(ONNX_METADATA_KEY)
    return resolve_metadata(fp32_onnx, embedded)


@pytest.fixture(scope="session")
def prototype(checkpoint, fp32_onnx, decoded_images, results_log, torch_threads):
    """(net, metadata): the prototype's ResNet-18, checked to give the SDK's
    FP32 model's logits on real cells (else no comparison would be fair)."""
    import torch

    from benchmarks.prototype import load_prototype_model, prototype_inputs
    from wbc_edge import preprocess_batch
    from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner

    net, meta, source = load_prototype_model(checkpoint=checkpoint, onnx_path=fp32_onnx)
    images = decoded_images[:16]
    with torch.no_grad():
        reference = net(torch.from_numpy(prototype_inputs(images, meta))).numpy()
    with OnnxRuntimeRunner(fp32_onnx) as runner:
        if tuple(runner.metadata.input_size) != tuple(meta.input_size):
            pytest.fail(f"the prototype's weights ({source}) are for input {meta.input_size}, the SDK's model "
                        f"{fp32_onnx} for {runner.metadata.input_size}")
        outputs = runner.infer(preprocess_batch(images, meta.input_size, policy=meta.resize_policy))
        logits = outputs[:, runner.metadata.output_columns["logits"]]  # the guard's and the maps' columns follow
    difference = float(np.abs(reference - logits).max())
    same_labels = bool((reference.argmax(1) == logits.argmax(1)).all())
    results_log.workload["model"] = {"prototype_weights": source, "sdk_fp32_model": str(fp32_onnx),
                                     "input_size": list(meta.input_size), "classes": list(meta.classes),
                                     "max_abs_logit_difference_vs_sdk_fp32": difference}
    if not same_labels or difference > 1e-2:
        pytest.fail(f"the prototype's weights ({source}) are not the SDK's FP32 model's: largest logit "
                    f"difference {difference:.3g} on {len(images)} cells; pass the checkpoint {fp32_onnx.name} "
                    "was exported from, or none")
    return net, meta


@pytest.fixture
def measure(benchmark, settings, results_log):
    """``measure(fn, stage=..., name=..., backend=..., precision=..., images=N,
    batch=None, threads=None, baseline=False, rounds=None, warmup=None, note="",
    extra=None)``: times ``fn()`` with pytest-benchmark (one call per round,
    after one warm-up call of ``warmup`` or else ``fn``) and records it.
    ``rounds=None`` picks enough rounds to fill about
    ``settings.seconds_per_case`` (from the warm-up's time). ``extra`` is
    stored as given (the caller may add to it after the run, for example a
    label agreement). Returns the last call's result."""

    def run(fn, *, stage, name, backend, precision, images, batch=None, threads=None, baseline=False,
            rounds=None, warmup=None, note="", extra=None):
        started = time.perf_counter()
        (warmup or fn)()  # first-call setup, caches, thread pools
        first = time.perf_counter() - started
        if rounds is None:
            rounds = settings.rounds_for(first)
        benchmark.group = stage
        benchmark.extra_info.update(name=name, stage=stage, backend=backend, precision=precision, batch=batch,
                                    threads=threads, images_per_round=images)
        result = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=0, iterations=1)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and stats.stats.data:  # None under --benchmark-disable
            results_log.measurements.append(Measurement(
                stage=stage, name=name, backend=backend, precision=precision, batch=batch, threads=threads,
                images_per_round=images, times_s=[float(t) for t in stats.stats.data], warmup_rounds=1,
                baseline=baseline, note=note, extra=extra if extra is not None else {}))
        return result

    return run
