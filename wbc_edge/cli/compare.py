"""Compare two models on the same labelled images: top-1 agreement, accuracy
and balanced accuracy of each, per-class recall change, and the largest change
of a (temperature-scaled) probability.

A is the reference (typically the FP32 model), B the candidate (FP16, INT8, an
engine, or a checkpoint run by PyTorch); each runs on the backend its file type
asks for (.onnx: onnxruntime, .pt: torch, .engine: tensorrt). The images come
from a folder per class or a manifest (--split picks rows, e.g. test).

With --min-agreement / --max-balanced-drop the command exits with status 1 when
B misses a target (for CI and release checks).

examples:
  wbc-edge compare model.onnx model.int8-cpu.onnx --data pbc --manifest pbc/manifest.csv --split test
  wbc-edge compare model.onnx model.int8-cpu.onnx --data pbc --manifest pbc/manifest.csv --split test \\
      --min-agreement 0.99 --max-balanced-drop 1 --out compare.json        # exit 1 on a miss (CI)
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="reference model (.onnx, .pt, .engine)")
    parser.add_argument("b", metavar="B", help="model compared with A")
    parser.add_argument("--data", required=True, help="folder per class, or the root of the manifest's relative paths")
    parser.add_argument("--manifest", help="CSV with path,label[,split]")
    parser.add_argument("--split", help="only the manifest rows of this split (e.g. test)")
    parser.add_argument("--out", help="write the full report (JSON) here")
    parser.add_argument("--min-agreement", type=float, metavar="FRACTION",
                        help="fail (exit 1) if top-1 agreement is below this, e.g. 0.995")
    parser.add_argument("--max-balanced-drop", type=float, metavar="POINTS",
                        help="fail (exit 1) if B's balanced accuracy is more than this many points below A's")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from wbc_edge.atomic import check_outputs, write_atomic
    from wbc_edge.calibration.compare import check_targets, compare_models, format_report
    from wbc_edge.report import finite_json

    check_outputs({"--out": args.out}, [args.a, args.b, args.data] + ([args.manifest] if args.manifest else []),
                  make_parents=True)
    report = compare_models(args.a, args.b, args.data, manifest=args.manifest, split=args.split,
                            progress=not args.no_progress)
    drop = None if args.max_balanced_drop is None else args.max_balanced_drop / 100
    missed = check_targets(report, args.min_agreement, drop)
    report["targets"] = {"min_agreement": args.min_agreement, "max_balanced_accuracy_drop": drop, "missed": missed}
    if args.out:
        write_atomic(args.out, json.dumps(finite_json(report), indent=1, allow_nan=False) + "\n")
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    if missed:
        print("targets missed: " + "; ".join(missed))
        return 1
    return 0
