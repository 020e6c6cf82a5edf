"""Adapt a model to a new lab from that lab's own cells.

Fine-tunes the model (default: the shipped one) on the new lab's labelled
cells and/or the confident predictions on its unlabelled cells, keeping the
original lab with the PBC reference cells shipped in the package, then writes
a model directory that --model accepts everywhere (classify, evaluate,
compare, calibrate, build-engine, Classifier.load): FP32 ONNX, INT8 for CPUs
and INT8 Q/DQ for TensorRT calibrated on the new lab's cells, metadata with a
recalibrated temperature and a refitted domain guard, and adapt-report.json
(.txt) with before/after figures. The directory is built beside --out and
renamed at the end: an interrupted run leaves nothing behind.

--labeled takes a folder per class (DATA/<label>/<image>), a manifest CSV
(path,label; or DATA with --manifest), or the review page's corrections.csv
(each row's image must still exist with the sha256 it was reviewed with).
Any subset of the model's classes; at least 8 cells and 2 per class present.
With 60 labelled cells or more, a fifth is held out to measure before/after.
--unlabeled takes a folder of cells (flat or nested), at least 32.

examples:
  wbc-edge adapt --labeled my-lab/ --out models/my-lab                   # a folder per class
  wbc-edge adapt --labeled review/corrections.csv --out models/my-lab    # from the review page
  wbc-edge adapt --unlabeled smears/2026-12/ --out models/my-lab          # no labels at all
  wbc-edge adapt --labeled review/corrections.csv --model models/my-lab --out models/my-lab-2
  wbc-edge classify cells/ --model models/my-lab
"""

from __future__ import annotations

import argparse
import sys

from ..errors import require

INSTALL = "pip install 'wbc-edge[train,quantize]'  (PyTorch CPU, ONNX, ModelOpt)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labeled", metavar="DATA",
                        help="labelled cells: folder per class, manifest CSV, or corrections.csv (default: none)")
    parser.add_argument("--manifest", help="with a --labeled folder: CSV with path,label relative to it")
    parser.add_argument("--unlabeled", metavar="DIR", help="a folder of the new lab's unlabelled cells (default: none)")
    parser.add_argument("--model", help="the base: a model file or a model directory from an earlier adapt "
                                        "(default: the shipped model)")
    parser.add_argument("--out", required=True, metavar="MODEL_DIR", help="the model directory to write")
    parser.add_argument("--epochs", type=int, default=30,
                        help="passes over the new lab's cells (steps are clamped to 40..240)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the held-out split, sampling and augmentation")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    require("torch", "PyTorch", INSTALL)
    require("onnx", "the onnx package", INSTALL)
    from ..training.adapt import AdaptConfig, adapt, summary_text

    if args.epochs < 1:
        print("error: --epochs must be at least 1", file=sys.stderr)
        return 2
    report = adapt(args.out, labeled=args.labeled, manifest=args.manifest, unlabeled=args.unlabeled,
                   model=args.model, force=args.force,
                   cfg=AdaptConfig(epochs=args.epochs, seed=args.seed, progress=not args.no_progress))
    sys.stdout.write(summary_text(report))
    print(f"model directory: {args.out} (use it with --model {args.out})")
    return 0
