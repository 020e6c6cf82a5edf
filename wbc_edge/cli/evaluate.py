"""Measure a model on labelled cell images.

DATA is a folder per class (DATA/<label>/**/<image>, scanned recursively) or,
with --manifest, the root of the manifest's relative paths (use --split test
to report on a held-out split). The data may hold a subset of the model's
classes; metrics then cover the classes present.

Prints accuracy, balanced accuracy and per-class precision/recall; --out writes
the full JSON (per_class, confusion_matrix, ece, errors, ...), --plots a
confusion matrix and a reliability diagram.

examples:
  wbc-edge evaluate pbc/ --manifest pbc/manifest.csv --split test --out metrics.json
  wbc-edge evaluate pbc/ --manifest pbc/manifest.csv --split test --model model.int8.onnx --plots plots/
  wbc-edge evaluate lab2/              # a folder per class: lab2/<label>/<image>
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                        help="auto: TensorRT for an engine, onnxruntime for ONNX, torch for a checkpoint")
    parser.add_argument("--batch-size", type=int, default=64, help="images per inference call")
    parser.add_argument("--out", help="write the metrics JSON here")
    parser.add_argument("--plots", metavar="DIR", help="write confusion_matrix.png and reliability.png here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_outputs
    from ..errors import WbcEdgeError, require
    from ..models import resolve_model
    from ..report import finite_json
    from ..training.evaluate import PLOT_NAMES, evaluate, format_report, save_plots

    # everything that can be refused is refused before the images are read
    if args.batch_size < 1:
        raise WbcEdgeError(f"--batch-size must be at least 1, got {args.batch_size}")
    outputs = {"--out": args.out}
    if args.plots is not None:
        require("matplotlib", "matplotlib (for --plots)", "pip install 'wbc-edge[plots]'")
        if args.plots == "" or (os.path.exists(args.plots) and not os.path.isdir(args.plots)):
            raise WbcEdgeError(f"--plots {args.plots!r}: must be a folder (it is made if missing)")
        outputs.update({f"--plots ({name})": os.path.join(args.plots, name) for name in PLOT_NAMES})
    inputs = [p for p in (args.data, args.manifest) if p]
    check_outputs(outputs, inputs, make_parents=True)
    if not os.path.isdir(args.data):
        raise WbcEdgeError(f"{args.data}: the data folder does not exist" if not os.path.exists(args.data)
                           else f"{args.data}: is not a folder")

    path = resolve_model(args.model, precision=args.precision, backend=args.backend)
    with load_runner(path, backend=args.backend) as runner:
        report = evaluate(runner, args.data, args.manifest, args.split, args.batch_size,
                          progress=not args.no_progress and sys.stderr.isatty())
    written = []
    if args.out:
        from ..atomic import write_atomic

        write_atomic(args.out, json.dumps(finite_json(report), indent=2, allow_nan=False) + "\n")
        written.append(f"metrics written to {args.out}")
    if args.plots:
        written += [f"plot written to {png}" for png in save_plots(report, args.plots)]
    print(format_report(report))
    for line in written:
        print(line)
    return 0
