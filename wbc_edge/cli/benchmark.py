"""Measure throughput and latency per batch size and concurrency, in the
spirit of Triton's perf_analyzer and trtexec: each request is one
predict_batch of BATCH images through the whole path (read, decode,
preprocess, infer), sent back to back by CONCURRENCY threads; warm-up
requests are not counted. Also the milliseconds per image of decoding,
preprocessing and inference. Works with every model the SDK runs, a Triton
server's included (--model grpc://host:8001/name).

examples:
  wbc-edge benchmark                                  the shipped model on the bundled PBC cells
  wbc-edge benchmark cells/ --batch-size 1,8,64 --concurrency 1,2,4 --duration 10 --out bench.json
  wbc-edge benchmark --model grpc://gpu-server:8001/wbc_resnet18 --concurrency 1,4,16
  wbc-edge benchmark --backend openvino --precision int8 --count 200
  wbc-edge benchmark --streams 2 --batch-size 64 --concurrency 1    two batches at once (default: one)
  wbc-edge benchmark --save                           also time onnxruntime vs openvino on this model and
                                                      cache the faster for --backend auto (as info --probe)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def _sizes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", help="images or folders (default: the PBC reference cells shipped "
                                                  "with wbc-edge)")
    parser.add_argument("--model", help="model file, model directory or Triton URL (default: the shipped model)")
    parser.add_argument("--backend", default="auto", help="auto, onnxruntime, openvino, torch, tensorrt, triton")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), help="a variant of the model")
    parser.add_argument("--batch-size", type=_sizes, default=[1, 8, 64], metavar="N[,N...]",
                        help="images per request (default: 1,8,64)")
    parser.add_argument("--concurrency", type=_sizes, default=[1, 2], metavar="N[,N...]",
                        help="threads sending requests at once (default: 1,2)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--duration", type=float, default=None, help="seconds per run (default: 3)")
    group.add_argument("--count", type=int, default=None, help="requests per run instead of a duration")
    parser.add_argument("--threads", type=int, help="CPU threads for decoding, preprocessing and inference")
    parser.add_argument("--streams", type=int, metavar="N",
                        help="CPU engines: batches inferred at once, sharing the threads (default: 1)")
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("--save", action="store_true",
                        help="also probe the CPU engines on this ONNX model (threads, streams as given) and cache "
                             "the faster for --backend auto, as 'wbc-edge info --probe' does")


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output, write_atomic
    from ..classifier import Classifier
    from ..errors import WbcEdgeError
    from ..files import find_images
    from ..throughput import machine, measure_run, stage_times

    if args.duration is not None and not args.duration > 0:
        raise WbcEdgeError(f"--duration must be more than 0 seconds, got {args.duration}")
    if args.count is not None and args.count < 1:
        raise WbcEdgeError(f"--count must be at least 1, got {args.count}")
    if args.streams is not None and args.streams < 1:
        raise WbcEdgeError(f"--streams must be at least 1, got {args.streams}")
    duration = 3.0 if args.duration is None and args.count is None else args.duration
    if args.out:
        check_output(args.out, "--out")
    # refused before any loading or timing: a model the probe cannot run
    probed = _probe_model(args.model, args.precision, args.backend) if args.save else None
    paths = []
    for item in args.inputs or [Path(__file__).resolve().parents[1] / "models" / "reference_cells"]:
        item = Path(item)
        if not item.exists():
            raise WbcEdgeError(f"{item}: no such file or folder")
        paths.extend(find_images(item) if item.is_dir() else [item])
    if not paths:
        raise WbcEdgeError("no images to benchmark with")
    images = []
    for path in paths:
        try:
            images.append(Path(path).read_bytes())
        except OSError as error:
            raise WbcEdgeError(f"{path}: cannot be read ({error.strerror or error})") from None

    runs = []
    with Classifier.load(args.model, backend=args.backend, precision=args.precision,
                         batch_size=max(args.batch_size), num_threads=args.threads,
                         streams=args.streams) as classifier:
        stages = stage_times(classifier, images)
        for batch in args.batch_size:
            for concurrency in args.concurrency:
                result = measure_run(classifier, images, batch, concurrency, duration=duration, count=args.count)
                runs.append(result)
                latency = result["latency_ms"]
                print(f"batch {batch:>4}  concurrency {concurrency:>3}  {result['images_per_s']:9.1f} images/s  "
                      f"latency ms p50 {latency['p50']:8.2f}  p95 {latency['p95']:8.2f}  p99 {latency['p99']:8.2f}",
                      flush=True)
        described = classifier.describe()
        threads, streams = classifier.num_threads, classifier.runner.streams
    print("ms per image: " + ", ".join(f"{k} {v:.3f}" for k, v in stages.items()))
    document = {"model": described, "images": len(images), "runs": runs,
                "stages_ms_per_image": stages, "machine": machine()}
    if args.save:
        document["engine_probe"] = _save_probe(probed, threads, streams)
    if args.out:
        write_atomic(args.out, json.dumps(document, indent=1) + "\n")
        print(f"written to {os.fspath(args.out)}")
    return 0


def _probe_model(model, precision: str | None, backend: str) -> Path:
    """The ONNX file ``--save`` probes (the one the benchmark loads), or
    WbcEdgeError: not an ONNX model, or no openvino to compare with."""
    from ..errors import WbcEdgeError
    from ..installed import has
    from ..models import resolve_model

    path = resolve_model(model, precision=precision, backend=backend)
    if not isinstance(path, Path) or path.suffix.lower() != ".onnx":
        raise WbcEdgeError(f"--save probes the CPU engines, which run ONNX models; {path} is not one")
    if not has("openvino"):
        raise WbcEdgeError("--save compares onnxruntime with openvino, which is not installed "
                           "(pip install 'wbc-edge[openvino]')")
    return path


def _save_probe(path: Path, threads: int, streams: int) -> dict:
    """Both CPU engines timed on the benchmarked ONNX model, cached for
    ``--backend auto`` (:func:`wbc_edge.backends.probe.probe`)."""
    from ..backends.probe import probe

    result = probe(path, threads, streams=streams)
    ms = result["ms_per_image"]
    print(f"engine probe: onnxruntime {ms['onnxruntime']:.3f}, openvino {ms['openvino']:.3f} ms per image "
          f"({threads} threads, {streams} stream{'s' * (streams > 1)}); --backend auto now runs "
          f"{result['backend']} for this model, threads and streams here")
    return result
