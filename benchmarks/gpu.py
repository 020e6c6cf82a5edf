"""The benchmark on an NVIDIA GPU machine (CUDA PyTorch; TensorRT where it exists).

    python -m benchmarks.gpu                          # full run on cuda:0, results in benchmarks/results/
    python -m benchmarks.gpu --quick                  # smoke run (a minute)
    python -m benchmarks.gpu --engine m.fp16.engine   # also the TensorRT backend on that engine
    python -m benchmarks.gpu --device cpu --quick     # the same code on the CPU (checks the script only)

Measures, in one process on one GPU, with the same images, input size and weights:

- end to end, file to label: the prototype's loop on the GPU (Pillow + numpy
  preprocessing, PyTorch eager FP32 NCHW ResNet-18 at batch 1, softmax, max,
  ``.item()``), against ``Classifier.predict_stream`` on the torch backend (FP16,
  channels-last, pinned staging buffers, decoding and preprocessing in threads
  overlapping the GPU), and on TensorRT engines where given or buildable;
- inference alone at batch 1..256: images/s and per-call latency p50/p99, for
  the prototype's model call, the torch backend in FP32 and FP16 (one caller,
  and two callers overlapping their batches), and TensorRT engines.

With no ``--engine`` and the full TensorRT package installed, engines are built
from the shipped FP16 (and INT8 TensorRT) ONNX models with ``wbc-edge
build-engine`` into a temporary folder. Results: one JSON in the suite's
schema (:mod:`benchmarks.results`), with the GPU in ``machine.gpu``; make the
table with ``python -m benchmarks.report FILE``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.machine import describe_machine, load_average
from benchmarks.results import Measurement, default_path, results_document, write_results
from benchmarks.workload import PBC_ENV, cell_images

FULL_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_BATCHES = (1, 8, 32)


def time_calls(fn: Callable[[], object], rounds: int, warmup: int = 3) -> list[float]:
    """Seconds per call of ``fn`` (which must return only when its work is done)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def rounds_for(fn: Callable[[], object], seconds: float, low: int, high: int) -> int:
    started = time.perf_counter()
    fn()
    once = max(time.perf_counter() - started, 1e-6)
    return int(min(high, max(low, round(seconds / once))))


def tile(cells: np.ndarray, batch: int) -> np.ndarray:
    reps = -(-batch // len(cells))
    return np.ascontiguousarray(np.concatenate([cells] * reps)[:batch])


def concurrent_images_per_s(infer: Callable[[np.ndarray], object], batch: np.ndarray, callers: int,
                            calls: int) -> list[float]:
    """Seconds per batch when ``callers`` threads call ``infer`` at once (a
    round = one batch's share of the wall time), so that copies and compute of
    different batches can overlap."""
    barrier = threading.Barrier(callers + 1)

    def work():
        barrier.wait()
        for _ in range(calls):
            infer(batch)

    threads = [threading.Thread(target=work) for _ in range(callers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return [elapsed / (callers * calls)] * (callers * calls)


class GpuBenchmark:
    def __init__(self, args: argparse.Namespace):
        import torch

        self.args = args
        self.torch = torch
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.half = self.cuda  # FP16 where it is fast
        self.measurements: list[Measurement] = []
        self.notes: list[str] = []
        self.workload: dict = {}
        self.labels: dict[str, list] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="wbc-edge-gpu-bench-"))

    # ---------------------------------------------------------------- helpers

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def record(self, times: Sequence[float], **fields) -> Measurement:
        measurement = Measurement(times_s=list(times), warmup_rounds=fields.pop("warmup_rounds", 1), **fields)
        self.measurements.append(measurement)
        row = measurement.to_dict()
        print(f"  {row['stage']:<11} {row['name']:<58} batch {row['batch']!s:>4}  "
              f"{row['images_per_s']:>10,.1f} images/s  p50 {row['latency_ms']['p50']:.2f} ms  "
              f"p99 {row['latency_ms']['p99']:.2f} ms", flush=True)
        return measurement

    def agreement(self, labels: list) -> float | None:
        reference = self.labels.get("prototype")
        if reference is None or len(reference) != len(labels):
            return None
        return sum(a == b for a, b in zip(labels, reference)) / len(labels)

    # ------------------------------------------------------------------ setup

    def load_models(self) -> None:
        from benchmarks.prototype import load_prototype_model
        from wbc_edge.training.checkpoint import save_checkpoint

        net, meta, source = load_prototype_model(checkpoint=self.args.checkpoint)
        self.meta = meta
        if self.args.checkpoint:
            self.checkpoint = Path(self.args.checkpoint)
        else:  # the torch backend loads checkpoints: save the rebuilt weights as one
            self.checkpoint = save_checkpoint({"model": net.state_dict(), "meta": meta.to_dict()},
                                              self.tmp / "rebuilt.pt")
        self.prototype_net = net.to(self.device).eval()  # FP32, NCHW: as the prototype runs it
        self.workload["model"] = {"prototype_weights": source, "input_size": list(meta.input_size),
                                  "classes": list(meta.classes), "torch_backend_checkpoint": str(self.checkpoint)}

    def load_images(self) -> None:
        from benchmarks.prototype import prototype_decode
        from wbc_edge import preprocess_batch

        images = cell_images(self.args.images)
        for path in set(images.paths):  # warm the file cache
            path.read_bytes()
        self.images = images
        self.workload["end_to_end"] = images.describe()
        if images.distinct < len(images.paths):
            self.notes.append(f"end to end: {images.note}")
        decoded = prototype_decode(images.paths[:min(256, len(images.paths))])
        self.cells = preprocess_batch(decoded, self.meta.input_size, policy=self.meta.resize_policy)

    # ------------------------------------------------------------- inference

    def bench_prototype_call(self) -> None:
        from benchmarks.prototype import prototype_inputs

        torch = self.torch
        x = torch.from_numpy(prototype_inputs(self.cells[:1], self.meta)).to(self.device)

        def call():
            with torch.no_grad():
                self.prototype_net(x)
            self.sync()

        rounds = rounds_for(call, self.args.seconds, 20, 2000)
        self.record(time_calls(call, rounds), stage="inference", name="prototype: torch eager FP32 NCHW",
                    backend="torch-eager", precision="fp32", batch=1, threads=torch.get_num_threads(),
                    images_per_round=1, baseline=True, note=f"the prototype's model call on {self.device}")

    def bench_runner(self, runner, name: str, backend: str, precision: str, note: str) -> None:
        for batch in self.args.batches:
            limit = getattr(runner, "max_batch_size", None)
            images = tile(self.cells, batch)
            call = lambda images=images: runner.infer(images)  # noqa: E731 - returns numpy: the work is done
            for _ in range(3):  # first calls per shape: cuDNN autotuning, allocator growth
                call()
            rounds = rounds_for(call, self.args.seconds, 10, 1000)
            split = f"; split into batches of {limit}" if limit and batch > limit else ""
            self.record(time_calls(call, rounds, warmup=0), stage="inference", name=name, backend=backend,
                        precision=precision, batch=batch, threads=None, images_per_round=batch, note=note + split)

    def bench_torch_backend(self) -> None:
        from wbc_edge.backends.torch import TorchRunner

        variants = [(False, "fp32")] + ([(True, "fp16")] if self.cuda else [])
        for half, precision in variants:
            with TorchRunner(self.checkpoint, device=str(self.device), half=half) as runner:
                self.bench_runner(runner, f"torch backend {precision} (channels-last, pinned)", "torch", precision,
                                  "TorchRunner.infer: uint8 NHWC upload, normalization on the device")
                if self.cuda and precision == "fp16":
                    for batch in [b for b in self.args.batches if b >= 32][-2:]:
                        images = tile(self.cells, batch)
                        concurrent_images_per_s(runner.infer, images, 2, 3)  # warm-up
                        calls = max(3, rounds_for(lambda images=images: runner.infer(images), self.args.seconds / 2, 3, 200) // 2)
                        self.record(concurrent_images_per_s(runner.infer, images, 2, calls), stage="inference",
                                    name="torch backend fp16, 2 callers (overlapping batches)", backend="torch",
                                    precision=precision, batch=batch, threads=2, images_per_round=batch,
                                    note="two threads calling infer at once: one stream and pinned buffers each; "
                                         "latency columns are wall time per batch, not per call")

    # ------------------------------------------------------------ end to end

    def bench_prototype_loop(self) -> None:
        from benchmarks.prototype import PrototypeLoop

        loop = PrototypeLoop(self.prototype_net, self.meta, device=str(self.device))
        paths = self.images.paths
        loop.run(paths[:16])  # warm-up
        results: list = []

        def run():
            results[:] = loop.run(paths)

        times = time_calls(run, self.args.rounds, warmup=0)
        self.labels["prototype"] = [label for label, _ in results]
        self.record(times, stage="end-to-end", name="prototype loop (Pillow + numpy + torch eager, batch 1)",
                    backend="torch-eager", precision="fp32", batch=1, threads=self.torch.get_num_threads(),
                    images_per_round=len(paths), baseline=True,
                    note=f"per image: open, convert, resize, normalize, ResNet-18 eager on {self.device}, "
                         f"softmax, max, .item(); {self.images.note}")

    def bench_classifier(self, model: Path, name: str, precision: str | None, batch_size: int, **options) -> None:
        from wbc_edge.classifier import Classifier

        paths = [str(p) for p in self.images.paths]
        with Classifier.load(model, precision=precision, batch_size=batch_size, **options) as classifier:
            classifier.predict_batch(paths[:batch_size])  # warm-up, first-shape autotuning
            labels, times = [], []
            for _ in range(self.args.rounds):
                started = time.perf_counter()
                labels = [p.label for p in classifier.predict_stream(paths)]
                times.append(time.perf_counter() - started)
            if None in labels:
                raise RuntimeError(f"{name}: some real cells were not classified")
            described = classifier.describe()
        self.record(times, stage="end-to-end", name=name, backend=described["backend"],
                    precision=described["precision"], batch=batch_size, threads=None,
                    images_per_round=len(paths), note=self.images.note,
                    extra={"label_agreement_with_prototype": self.agreement(labels), "runner": described["runner"]})

    # -------------------------------------------------------------- TensorRT

    def engines(self) -> list[Path]:
        if self.args.engine:
            return [Path(e) for e in self.args.engine]
        if not self.cuda or importlib.util.find_spec("tensorrt") is None:
            self.notes.append("TensorRT: not measured (no --engine given and the full 'tensorrt' package, "
                              "which builds engines, is not installed here)")
            return []
        from wbc_edge.models import shipped_models

        built = []
        for variant in ("fp16", "int8-tensorrt"):
            shipped = shipped_models().get(variant)
            if shipped is None:
                self.notes.append(f"TensorRT {variant}: default.{variant}.onnx is not shipped; not measured")
                continue
            out = self.tmp / f"default.{variant}.engine"
            command = [sys.executable, "-c", "import sys; from wbc_edge.cli import main; sys.exit(main())",
                       "build-engine", "--onnx", str(shipped.path), "--out", str(out),
                       "--opt-batch", "64", "--max-batch", str(max(256, *self.args.batches)), "--quiet"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                self.notes.append(f"TensorRT {variant}: building the engine failed: "
                                  f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
                continue
            built.append(out)
        return built

    def bench_tensorrt(self) -> None:
        from wbc_edge.backends import load_runner

        for engine in self.engines():
            try:
                runner = load_runner(engine, backend="tensorrt")
            except Exception as error:  # record why, keep the rest of the run
                self.notes.append(f"TensorRT {engine.name}: cannot load ({error})")
                continue
            with runner:
                precision = runner.metadata.precision
                self.bench_runner(runner, f"tensorrt {engine.name}", "tensorrt", precision,
                                  "TensorRTRunner.infer: pinned buffers, execute_async_v3")
            self.bench_classifier(engine, f"Classifier.predict_stream (tensorrt {engine.name})", None,
                                  self.args.batch_size)

    # ------------------------------------------------------------------- run

    def section(self, what: str, fn: Callable[[], object]) -> None:
        """Runs one part; a failure is recorded and the run goes on (it runs unattended)."""
        try:
            fn()
        except Exception as error:
            traceback.print_exc()
            self.notes.append(f"{what}: failed ({type(error).__name__}: {error})")

    def run(self) -> Path:
        print(f"wbc-edge GPU benchmark on {self.device} ({'quick' if self.args.quick else 'full'})", flush=True)
        self.workload["load_average_at_start"] = load_average()
        self.load_models()
        self.load_images()
        print("inference:", flush=True)
        self.section("prototype model call", self.bench_prototype_call)
        self.section("torch backend inference", self.bench_torch_backend)
        print("end to end:", flush=True)
        self.section("prototype loop", self.bench_prototype_loop)
        precision = "fp16" if self.half else "fp32"
        self.section("Classifier on the torch backend", lambda: self.bench_classifier(
            self.checkpoint, f"Classifier.predict_stream (torch {precision}, {self.device.type})", precision,
            self.args.batch_size, backend="torch", device=str(self.device)))
        self.section("TensorRT", self.bench_tensorrt)
        machine = describe_machine()
        env = f"{PBC_ENV}={shlex.quote(os.environ[PBC_ENV])} " if os.environ.get(PBC_ENV) else ""
        command = env + "python -m benchmarks.gpu " + " ".join(shlex.quote(a) for a in self.args.argv)
        document = results_document(self.measurements, mode="quick" if self.args.quick else "full",
                                    command=command, machine=machine, workload=self.workload, notes=self.notes)
        path = write_results(document, self.args.out or default_path(document["mode"], machine))
        print(f"results: {path}  (table: python -m benchmarks.report {path})")
        return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (to check the script)")
    parser.add_argument("--quick", action="store_true", help="smoke run: few images, batches and rounds")
    parser.add_argument("--images", type=int, help="end-to-end images (default 1000; quick 64)")
    parser.add_argument("--rounds", type=int, help="end-to-end rounds (default 3; quick 1)")
    parser.add_argument("--batches", help=f"inference batch sizes (default {','.join(map(str, FULL_BATCHES))})")
    parser.add_argument("--batch-size", type=int, default=64, help="the Classifier's batch size end to end")
    parser.add_argument("--seconds", type=float, help="time to spend per inference case (default 5; quick 0.5)")
    parser.add_argument("--checkpoint", help="weights (default: rebuilt from the shipped FP32 ONNX model)")
    parser.add_argument("--engine", action="append", help="a TensorRT engine to measure (repeatable)")
    parser.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/DATE-HOST-gpu.json)")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    args.argv = raw
    args.images = args.images or (64 if args.quick else 1000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (0.5 if args.quick else 5.0)
    try:
        args.batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else \
            (QUICK_BATCHES if args.quick else FULL_BATCHES)
    except ValueError:
        parser.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
    if min(args.batches) < 1 or args.images < 1 or args.rounds < 1 or args.batch_size < 1:
        parser.error("--batches, --images, --rounds and --batch-size must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("python -m benchmarks.gpu: needs PyTorch (a CUDA build on a GPU machine)", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"python -m benchmarks.gpu: PyTorch {torch.__version__} sees no CUDA GPU here; "
              "run it on a GPU machine, or pass --device cpu to check the script", file=sys.stderr)
        return 2
    GpuBenchmark(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
