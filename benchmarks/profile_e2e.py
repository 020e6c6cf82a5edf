"""Where the end-to-end time goes: each stage of the SDK's path timed alone on
the same images, next to the prototype's stages, plus an optional cProfile of
``Classifier.predict_stream`` (its calling thread).

    python -m benchmarks.profile_e2e                     # 256 images, default model and threads
    python -m benchmarks.profile_e2e --images 64 --threads 1 --cprofile 15

Stage times are the best of ``--repeat`` passes (the least disturbed by other
work on the machine); they are for finding the bottleneck, not for the README
(the suite measures that: ``python -m pytest benchmarks/ --benchmark-only``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Sequence
from typing import Callable

from benchmarks.workload import cell_images


def best_of(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--threads", type=int, help="cap every library at N threads (default: all CPUs)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], help="shipped variant (default: the SDK's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--prototype", action="store_true", help="also time the prototype's stages (needs torch)")
    parser.add_argument("--cprofile", type=int, metavar="N", help="print the N most expensive functions of predict_stream")
    args = parser.parse_args(argv)

    import numpy as np

    from wbc_edge import preprocess_batch
    from wbc_edge.classifier import Classifier
    from wbc_edge.decode import decode_images
    from wbc_edge.metrics import softmax

    images = cell_images(args.images)
    paths = [str(p) for p in images.paths]
    for path in set(images.paths):
        path.read_bytes()
    classifier = Classifier.load(precision=args.precision, batch_size=args.batch_size, num_threads=args.threads)
    meta = classifier.metadata
    threads = classifier.num_threads
    print(f"{images.note}; {classifier!r}; {threads} thread(s); best of {args.repeat}")

    decoded = decode_images(paths, num_threads=threads)
    batch = preprocess_batch(decoded, meta.input_size, num_threads=threads, policy=meta.resize_policy)

    def infer_all():
        return [classifier.runner.infer(batch[i:i + args.batch_size]) for i in range(0, len(batch), args.batch_size)]

    logits = np.concatenate(infer_all())
    stages = {
        "decode (decode_images)": best_of(lambda: decode_images(paths, num_threads=threads), args.repeat),
        "preprocess (preprocess_batch uint8)": best_of(
            lambda: preprocess_batch(decoded, meta.input_size, num_threads=threads, policy=meta.resize_policy),
            args.repeat),
        f"inference (runner.infer, batch {args.batch_size})": best_of(infer_all, args.repeat),
        "softmax": best_of(
            lambda: softmax(logits, meta.temperature), args.repeat),
    }
    total = best_of(lambda: list(classifier.predict_stream(paths)), args.repeat)
    _print("SDK", stages, total, len(paths))

    if args.prototype:
        import torch

        from benchmarks.prototype import PrototypeLoop, load_prototype_model, prototype_decode, prototype_inputs

        if args.threads:
            torch.set_num_threads(args.threads)
        net, pmeta, _ = load_prototype_model()
        arrays = prototype_decode(paths)
        tensors = [torch.from_numpy(prototype_inputs([a], pmeta)) for a in arrays]

        def eager():
            with torch.no_grad():
                for x in tensors:
                    torch.softmax(net(x), dim=1).max(dim=1)

        prototype_stages = {
            "decode (Image.open + convert)": best_of(lambda: prototype_decode(paths), args.repeat),
            "preprocess (cell finder + Pillow resize + numpy)": best_of(
                lambda: prototype_inputs(arrays, pmeta), args.repeat),
            "inference (torch eager, batch 1, softmax)": best_of(eager, args.repeat),
        }
        loop = PrototypeLoop(net, pmeta)
        _print(f"prototype (torch {torch.get_num_threads()} threads)", prototype_stages,
               best_of(lambda: loop.run(paths), args.repeat), len(paths))

    if args.cprofile:
        profile = cProfile.Profile()
        profile.runcall(lambda: list(classifier.predict_stream(paths)))
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(args.cprofile)
        print(out.getvalue())
    classifier.close()
    return 0


def _print(title: str, stages: dict, total: float, count: int) -> None:
    print(f"\n{title}: {count} images")
    for name, seconds in stages.items():
        print(f"  {name:<46} {1000 * seconds / count:8.3f} ms/image  {100 * seconds / total:5.1f}% of end to end")
    print(f"  {'sum of stages':<46} {1000 * sum(stages.values()) / count:8.3f} ms/image")
    print(f"  {'end to end':<46} {1000 * total / count:8.3f} ms/image  ({count / total:,.1f} images/s)")


if __name__ == "__main__":
    sys.exit(main())
