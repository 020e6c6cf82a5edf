"""What ``wbc-edge benchmark`` measures: a classifier's throughput and latency
per batch size and concurrency, as Triton's perf_analyzer does, and the time
per image of each stage (decode, preprocess, inference).

A request is one ``predict_batch`` of ``batch_size`` encoded images (the
whole path: read, decode, preprocess, infer, predictions); ``concurrency``
threads send requests back to back through one classifier (it is
thread-safe), so a backend that batches or overlaps work (Triton, TensorRT)
shows it. Warm-up requests are not counted.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends.base import BatchJob
from .decode import decode_images
from .preprocess import preprocess_batch


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` of ``values`` (linear interpolation)."""
    return {f"p{q:g}": float(np.percentile(np.asarray(values, np.float64), q)) for q in qs}


def measure_run(classifier, images: Sequence[bytes], batch_size: int, concurrency: int,
                duration: float | None = None, count: int | None = None) -> dict[str, Any]:
    """Requests of ``batch_size`` images from ``concurrency`` threads for
    ``duration`` seconds (or ``count`` requests in all), after one warm-up
    request per thread: images/s and per-request latency percentiles (ms)."""
    if duration is None and count is None:
        raise ValueError("give a duration or a count")
    batches = [[images[(start + i) % len(images)] for i in range(batch_size)] for start in range(len(images))]
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    sent, began = [0], [0.0]
    # the clock starts when every thread has warmed up (the action runs before any is released)
    start_line = threading.Barrier(concurrency + 1, action=lambda: began.__setitem__(0, time.perf_counter()))

    def worker(k: int) -> None:
        try:
            classifier.predict_batch(batches[k % len(batches)])  # warm-up: not counted
            start_line.wait()
            i = k
            while True:
                with lock:
                    if count is not None and sent[0] >= count:
                        return
                    if duration is not None and time.perf_counter() - began[0] >= duration:
                        return
                    sent[0] += 1
                t0 = time.perf_counter()
                classifier.predict_batch(batches[i % len(batches)])
                elapsed = time.perf_counter() - t0
                with lock:
                    latencies.append(elapsed)
                i += concurrency
        except BaseException as error:  # surfaced below, after the other threads stop
            errors.append(error)
            if not start_line.broken:
                start_line.abort()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        start_line.wait()
    except threading.BrokenBarrierError:
        pass
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began[0]
    if errors:
        raise errors[0]
    if not latencies:
        raise ValueError("no request finished: give a longer --duration or a larger --count")
    return {"batch_size": batch_size, "concurrency": concurrency, "requests": len(latencies),
            "images_per_s": len(latencies) * batch_size / wall,
            "latency_ms": {k: v * 1000 for k, v in percentiles(latencies).items()}}


def stage_times(classifier, images: Sequence[bytes], rounds: int = 3) -> dict[str, float]:
    """Milliseconds per image of decoding, preprocessing and inference (the
    best of ``rounds``, each over every image, the classifier's threads and
    batch size; inference with the runner's streams, all busy where there are
    batches enough)."""
    meta = classifier.metadata
    size, policy, threads = meta.input_size, meta.resize_policy, classifier.num_threads

    def best(step) -> float:
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return min(times) * 1000 / len(images)

    decoded = decode_images(list(images), num_threads=threads, reduce_to=size)
    decoded = [d for d in decoded if isinstance(d, np.ndarray)]
    batch = preprocess_batch(decoded, size, num_threads=threads, policy=policy)
    step = classifier.batch_size

    def infer_all() -> None:  # through run_batches, so a runner's streams overlap as they do in use
        jobs = (BatchJob(len(part), lambda out, part=part: part) for part in
                (batch[i:i + step] for i in range(0, len(batch), step)))
        for _ in classifier.runner.run_batches(jobs):
            pass

    return {
        "decode": best(lambda: decode_images(list(images), num_threads=threads, reduce_to=size)),
        "preprocess": best(lambda: preprocess_batch(decoded, size, num_threads=threads, policy=policy)),
        "inference": best(infer_all),
    }


def machine() -> dict[str, Any]:
    """Where it ran, for the JSON."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}
