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

Only regular files are read: a FIFO, a device or a socket named .jpg is
reported, never opened. A path named twice (or named and found in a named
folder) is reported once; two paths that are the same file (a hard or
symbolic link) are both reported, the second marked "same_file_as" the first,
and the cell is counted once. Every output path (--out, --csv) is checked
before any work: it must be a new or regular file (not a link, a folder or a
device), writable, and neither an input nor the other output. The report files
are written before anything is printed, so a closed stdout (| head) loses
nothing.

Exit status: 0 when the run completed (even if some inputs were unreadable:
they are in the report); 2 when nothing could run (no model, bad arguments,
missing backend, no inputs, an input that is neither a file nor a folder, an
unusable output path).

examples:
  wbc-edge classify examples/
  wbc-edge classify cells/ more/cell.png --out report.json --csv predictions.csv
  wbc-edge classify cells/ --review-threshold 0.95 --review-threshold monocyte=0.98 --always-review ig
  wbc-edge classify cells/ --model model.int8.engine --batch-size 128
  wbc-edge classify cells/ --backend openvino          # the OpenVINO CPU engine (pip install 'wbc-edge[openvino]')
  wbc-edge classify cells/ --threads 16 --streams 4    # 4 batches at once, 4 threads each (a many-core server)
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from pathlib import Path

from ..backends import BACKENDS
from ..classifier import MAX_BATCH_SIZE
from ..decode import MAX_PIXELS as MAX_PIXELS_DEFAULT
from ..errors import WbcEdgeError

#: Per-image lines are printed for runs up to this many inputs (--per-image auto).
PER_IMAGE_AUTO_LIMIT = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    parser.add_argument("--model", help="model file (.onnx, .engine, .pt); None: the shipped default model")
    parser.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                        help="auto: TensorRT for an engine, torch for a checkpoint, onnxruntime for ONNX (openvino "
                             "where 'wbc-edge info --probe' measured it faster on this CPU)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                        help="which shipped variant of the default model; None: the fastest shipped one "
                             "(on CPU: int8 if shipped, else fp32)")
    parser.add_argument("--device", help="cpu or cuda[:N]; None: the backend's own")
    parser.add_argument("--batch-size", type=int, default=64,
                        help=f"images per inference call (at most {MAX_BATCH_SIZE}; larger values are capped)")
    parser.add_argument("--threads", type=int, help="CPU threads for decoding, preprocessing and the CPU engines; "
                                                    "None: all usable CPUs")
    parser.add_argument("--streams", type=int, metavar="N",
                        help="CPU engines (onnxruntime, openvino): batches inferred at once, sharing the threads "
                             "(more can fill many cores; measure with 'wbc-edge benchmark --streams'); None: 1")
    parser.add_argument("--out", metavar="REPORT.json", help="write the full JSON report here")
    parser.add_argument("--csv", metavar="PREDICTIONS.csv", help="write one row per input here")
    parser.add_argument("--review-threshold", action="append", metavar="[CLASS=]P",
                        help="flag cells whose confidence is below P, for every class, or for one with "
                             "CLASS=P; repeatable; None: the model's default (0.90)")
    parser.add_argument("--always-review", action="append", metavar="CLASS[,CLASS]",
                        help="classes whose cells are always flagged ('none': no class); repeatable; "
                             "None: the model's default (ig, erythroblast)")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS_DEFAULT, metavar="N",
                        help="refuse images with more pixels than this, as possible decompression bombs")
    parser.add_argument("--per-image", choices=["auto", "all", "none"], default="auto",
                        help=f"print one line per image (auto: for up to {PER_IMAGE_AUTO_LIMIT} inputs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when stderr is no terminal)")


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_outputs
    from ..classifier import Classifier
    from ..domain_check import shift_warning
    from ..report import (
        build_report,
        format_differential,
        format_errors,
        format_images,
        terminal_text,
        write_csv,
        write_json,
    )
    from ..review import parse_review_options

    if args.batch_size < 1:
        raise WbcEdgeError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.batch_size > MAX_BATCH_SIZE:
        warn(f"--batch-size {args.batch_size} is more than {MAX_BATCH_SIZE}: using {MAX_BATCH_SIZE} "
             "(memory grows with the images in flight; larger batches are not faster)")
        args.batch_size = MAX_BATCH_SIZE
    if args.threads is not None and args.threads < 1:
        raise WbcEdgeError(f"--threads must be at least 1, got {args.threads}")
    if args.streams is not None and args.streams < 1:
        raise WbcEdgeError(f"--streams must be at least 1, got {args.streams}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise WbcEdgeError(f"--max-pixels must be at least 1, got {args.max_pixels}")

    inputs, unlisted, same_file = collect_inputs(args.inputs)
    check_outputs({"--out": args.out, "--csv": args.csv}, [*args.inputs, *inputs])
    if not inputs and not unlisted:
        raise WbcEdgeError(f"no image files found in {', '.join(map(terminal_text, args.inputs))} "
                           "(folders are scanned for .jpg .jpeg .png .bmp .tif .tiff)")

    started = time.perf_counter()
    classifier = Classifier.load(args.model, backend=args.backend, precision=args.precision,
                                 batch_size=args.batch_size, device=args.device, num_threads=args.threads,
                                 streams=args.streams, max_pixels=args.max_pixels)
    with classifier:
        policy = parse_review_options(args.review_threshold, args.always_review, base=classifier.review)
        if policy is not None:
            classifier.review = policy
        loaded = time.perf_counter()
        unique = [path for i, path in enumerate(inputs) if i not in same_file]
        classified_once = _classify(classifier, unique, progress=not args.no_progress and sys.stderr.isatty())
        finished = time.perf_counter()
        model = classifier.describe()
        review_policy = classifier.review.to_dict()
        domain_guard = classifier.metadata.domain_guard

    predictions = _with_links(inputs, classified_once, same_file)
    offset = len(unlisted)
    predictions = unlisted + predictions
    repeats = {offset + i: os.fspath(inputs[first]) for i, first in same_file.items()}
    classified = sum(p.ok for p in predictions)
    timings = {
        "load_s": round(loaded - started, 4),
        "classify_s": round(finished - loaded, 4),
        "images_per_s": round(len(unique) / (finished - loaded), 1) if finished > loaded and unique else None,
    }
    report = build_report(predictions, model, review_policy, timings, domain_guard, same_file=repeats)

    # the files first: a reader that closes stdout early (| head) must not lose them
    written = []
    try:
        if args.out is not None:
            written.append(f"report written to {terminal_text(os.fspath(write_json(report, args.out)))}")
        if args.csv is not None:
            written.append(f"predictions written to "
                           f"{terminal_text(os.fspath(write_csv(predictions, model['classes'], args.csv, same_file=repeats)))}")
    except OSError as error:
        raise WbcEdgeError(f"cannot write {terminal_text(error.filename or '')}: {error.strerror or error}") from None

    print(f"{len(predictions)} input{'s' if len(predictions) != 1 else ''}, {classified} classified with "
          f"{terminal_text(model['name'])} ({model['precision']}, {model['backend']}) in {timings['classify_s']:.2f} s"
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
    for line in written:
        print(line)
    return 0


def warn(message: str, kind: str = "warning") -> None:
    print(f"wbc-edge classify: {kind}: {message}", file=sys.stderr)


def collect_inputs(items: list[str]):
    """The files to classify, error predictions for folders that could not be
    listed, and ``{index: index of the first path}`` for paths that are the
    same file as an earlier one (a hard or symbolic link).

    A path reached twice (named twice, or named and inside a named folder) is
    listed once. An input that does not exist and has no image file name (a
    misspelled folder, most likely) is an error: nothing runs."""
    from ..files import find_images, is_image_name
    from ..prediction import Prediction
    from ..report import terminal_text

    missing = [item for item in items if not os.path.lexists(item) and not is_image_name(item)]
    if missing:
        raise WbcEdgeError("no such file or folder: " + ", ".join(terminal_text(os.fspath(m)) for m in missing))
    paths, seen, unlisted, duplicates = [], set(), [], 0
    files: dict[tuple[int, int], int] = {}
    same_file: dict[int, int] = {}
    for item in items:
        path = Path(item)
        if path.is_dir():
            errors: list = []
            found = find_images(path, errors=errors)
            unlisted += [Prediction.failed(os.fspath(folder), f"folder cannot be read ({reason}); "
                                                             "images in it were not classified")
                         for folder, reason in errors]
            if not found and not errors:
                warn(f"{terminal_text(os.fspath(item))}: no image files in this folder")
        else:
            found = [path]
        for file in found:
            key = os.path.normcase(os.path.abspath(file))
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            try:
                info = os.stat(file)
                identity = (info.st_dev, info.st_ino) if stat.S_ISREG(info.st_mode) else None
            except OSError:
                identity = None
            if identity is not None:
                if identity in files:
                    same_file[len(paths)] = files[identity]
                else:
                    files[identity] = len(paths)
            paths.append(file)
    if duplicates:
        warn(f"{duplicates} path{'s' if duplicates != 1 else ''} named more than once, listed once", kind="note")
    if same_file:
        first = next(iter(same_file.items()))
        warn(f"{len(same_file)} path{'s' if len(same_file) != 1 else ''} are the same file as another input "
             f"(hard or symbolic links; e.g. {terminal_text(os.fspath(paths[first[0]]))} is "
             f"{terminal_text(os.fspath(paths[first[1]]))}): each is listed, marked same_file_as, and the cell "
             "is counted once", kind="note")
    return paths, unlisted, same_file


def _with_links(inputs, classified_once, same_file):
    """Predictions for every input path, in order: a path that is the same file
    as an earlier one gets the earlier one's answer under its own name."""
    import dataclasses

    results, once = [], iter(classified_once)
    for i, path in enumerate(inputs):
        if i in same_file:
            results.append(dataclasses.replace(results[same_file[i]], path=os.fspath(path)))
        else:
            results.append(next(once))
    return results


def _classify(classifier, paths, progress: bool):
    from tqdm import tqdm

    results = []
    with tqdm(total=len(paths), unit="img", file=sys.stderr, disable=not progress, leave=False,
              desc="classifying") as bar:
        for prediction in classifier.predict_stream(paths):
            results.append(prediction)
            bar.update(1)
    return results
