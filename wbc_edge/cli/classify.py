"""Classify cell images and print the differential count.

INPUTS are image files and folders. Folders are scanned recursively for .jpg,
.jpeg, .png, .bmp, .tif and .tiff files (other files in them are ignored);
files named explicitly are always attempted. Every input is reported exactly
once: classified, or with the reason it could not be (missing, empty,
truncated, not an image, too large, ...); such inputs never stop the run.

The model is the shipped default unless --model names one; --precision picks
a shipped variant (default on the CPU: int8 when the int8-cpu model is
shipped, else fp32). A cell is flagged for review when its calibrated
confidence is below the threshold (default 0.90), or when its class is one the
lab always checks (default: ig and erythroblast).

Exit status: 0 when the run completed (even if some inputs were unreadable:
they are in the report); 2 when nothing could run (no model, bad arguments,
missing backend, no inputs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..backends import BACKENDS
from ..errors import WbcEdgeError

#: Per-image lines are printed for runs up to this many inputs (--per-image auto).
PER_IMAGE_AUTO_LIMIT = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    parser.add_argument("--model", help="model file (.onnx, .engine, .pt); None: the shipped default model")
    parser.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                        help="auto: TensorRT for an engine, onnxruntime for ONNX, torch for a checkpoint")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                        help="which shipped variant of the default model; None: the fastest shipped one "
                             "(on CPU: int8 if shipped, else fp32)")
    parser.add_argument("--device", help="cpu or cuda[:N]; None: the backend's own")
    parser.add_argument("--batch-size", type=int, default=64, help="images per inference call")
    parser.add_argument("--threads", type=int, help="CPU threads for decoding and preprocessing; None: all usable CPUs")
    parser.add_argument("--out", metavar="REPORT.json", help="write the full JSON report here")
    parser.add_argument("--csv", metavar="PREDICTIONS.csv", help="write one row per input here")
    parser.add_argument("--review-threshold", action="append", metavar="[CLASS=]P",
                        help="flag cells whose confidence is below P, for every class, or for one with "
                             "CLASS=P; repeatable; None: the model's default (0.90)")
    parser.add_argument("--always-review", action="append", metavar="CLASS[,CLASS]",
                        help="classes whose cells are always flagged ('none': no class); repeatable; "
                             "None: the model's default (ig, erythroblast)")
    parser.add_argument("--per-image", choices=["auto", "all", "none"], default="auto",
                        help=f"print one line per image (auto: for up to {PER_IMAGE_AUTO_LIMIT} inputs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when stderr is no terminal)")


def run(args: argparse.Namespace) -> int:
    from ..classifier import Classifier
    from ..domain_check import shift_warning
    from ..report import build_report, format_differential, format_errors, format_images, write_csv, write_json
    from ..review import parse_review_options

    if args.batch_size < 1:
        raise WbcEdgeError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise WbcEdgeError(f"--threads must be at least 1, got {args.threads}")
    for option, value in (("--out", args.out), ("--csv", args.csv)):
        if value and not Path(value).resolve().parent.is_dir():
            raise WbcEdgeError(f"{option} {value}: the folder {Path(value).parent} does not exist")

    inputs, unlisted = collect_inputs(args.inputs)
    if not inputs and not unlisted:
        raise WbcEdgeError(f"no image files found in {', '.join(args.inputs)} "
                           "(folders are scanned for .jpg .jpeg .png .bmp .tif .tiff)")

    started = time.perf_counter()
    classifier = Classifier.load(args.model, backend=args.backend, precision=args.precision,
                                 batch_size=args.batch_size, device=args.device, num_threads=args.threads)
    with classifier:
        policy = parse_review_options(args.review_threshold, args.always_review, base=classifier.review)
        if policy is not None:
            classifier.review = policy
        loaded = time.perf_counter()
        predictions = _classify(classifier, inputs, progress=not args.no_progress and sys.stderr.isatty())
        finished = time.perf_counter()
        model = classifier.describe()
        review_policy = classifier.review.to_dict()
        domain_guard = classifier.metadata.domain_guard

    predictions = unlisted + predictions
    classified = sum(p.ok for p in predictions)
    timings = {
        "load_s": round(loaded - started, 4),
        "classify_s": round(finished - loaded, 4),
        "images_per_s": round(len(inputs) / (finished - loaded), 1) if finished > loaded and inputs else None,
    }
    report = build_report(predictions, model, review_policy, timings, domain_guard)

    print(f"{len(predictions)} input{'s' if len(predictions) != 1 else ''}, {classified} classified with "
          f"{model['name']} ({model['precision']}, {model['backend']}) in {timings['classify_s']:.2f} s"
          + (f" ({timings['images_per_s']:g} images/s)" if timings["images_per_s"] else ""))
    show = args.per_image == "all" or (args.per_image == "auto" and len(predictions) <= PER_IMAGE_AUTO_LIMIT)
    if show:
        print()
        print(format_images(report))
    print()
    print(format_differential(report))
    if not show and report["differential"]["errors"]:
        print(format_errors(report))
    warning = shift_warning(report["domain_check"])
    if warning:
        print()
        print(warning, file=sys.stderr)
    if args.out:
        print(f"report written to {write_json(report, args.out)}")
    if args.csv:
        print(f"predictions written to {write_csv(predictions, model['classes'], args.csv)}")
    return 0


def collect_inputs(items: list[str]):
    """The files to classify, and error predictions for folders that could not
    be listed. A file reached twice (named and inside a named folder, say) is
    classified once, so the differential counts each cell once."""
    from ..files import find_images
    from ..prediction import Prediction

    paths, seen, unlisted, duplicates = [], set(), [], 0
    for item in items:
        path = Path(item)
        if path.is_dir():
            errors: list = []
            found = find_images(path, errors=errors)
            unlisted += [Prediction.failed(os.fspath(folder), f"folder cannot be read ({reason}); "
                                                             "images in it were not classified")
                         for folder, reason in errors]
            if not found and not errors:
                print(f"wbc-edge classify: warning: {item}: no image files in this folder", file=sys.stderr)
        else:
            found = [path]
        for file in found:
            key = os.path.realpath(file)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            paths.append(file)
    if duplicates:
        print(f"wbc-edge classify: note: {duplicates} file{'s' if duplicates != 1 else ''} named more than once "
              "classified once", file=sys.stderr)
    return paths, unlisted


def _classify(classifier, paths, progress: bool):
    from tqdm import tqdm

    results = []
    with tqdm(total=len(paths), unit="img", file=sys.stderr, disable=not progress, leave=False,
              desc="classifying") as bar:
        for prediction in classifier.predict_stream(paths):
            results.append(prediction)
            bar.update(1)
    return results
