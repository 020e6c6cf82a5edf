"""Measure a model on labelled cell images.

DATA is a folder per class (DATA/<label>/**/<image>, scanned recursively) or,
with --manifest, the root of the manifest's relative paths (use --split test
to report on a held-out split). The data may hold a subset of the model's
classes; metrics then cover the classes present.

Prints accuracy, balanced accuracy and per-class precision/recall; --out writes
the full JSON (per_class, confusion_matrix, ece, errors, ...), --plots a
confusion matrix and a reliability diagram.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..backends import BACKENDS, load_runner


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="folder per class, or the root of the manifest's paths")
    parser.add_argument("--manifest", help="CSV with path,label[,split]")
    parser.add_argument("--split", help="only this split of the manifest (e.g. test)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="model file (.onnx, .engine, .pt); default: the shipped model")
    which.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                       help="a shipped variant of the default model")
    parser.add_argument("--backend", choices=["auto", *BACKENDS], default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", help="write the metrics JSON here")
    parser.add_argument("--plots", metavar="DIR", help="write confusion_matrix.png and reliability.png here")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from ..models import resolve_model
    from ..training.evaluate import evaluate, format_report, save_plots

    path = resolve_model(args.model, precision=args.precision, backend=args.backend)
    with load_runner(path, backend=args.backend) as runner:
        report = evaluate(runner, args.data, args.manifest, args.split, args.batch_size,
                          progress=not args.no_progress and sys.stderr.isatty())
    print(format_report(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"metrics written to {args.out}")
    if args.plots:
        for png in save_plots(report, args.plots):
            print(f"plot written to {png}")
    return 0
