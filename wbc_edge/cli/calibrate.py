"""Make an FP16 or INT8 (calibrated) ONNX model from the FP32 one.

Calibration images are drawn from the training split only (with a manifest:
split=train rows, never test), stratified across classes, and read and
preprocessed exactly as inference does (the model's input size and resize
policy).

  --precision fp16                 float16 weights and compute (ModelOpt AutoCast), float32 where
                                   the numerics need it; uint8 input and float32 logits kept
  --precision int8 --target tensorrt
                                   explicit Q/DQ for TensorRT's strongly typed networks (ModelOpt
                                   PTQ): symmetric int8, per-channel weights; methods: max, entropy
  --precision int8 --target cpu    the fast form for x86 CPUs with ONNX Runtime (quantize_static,
                                   QDQ): uint8 activations, int8 per-channel weights; methods:
                                   percentile, max

Beside OUT.onnx it writes OUT.json (the metadata, precision and quantization
record) and OUT.calibration.json (the images with their sha256, the method, the
resulting activation ranges, tool versions and the command line).

examples:
  wbc-edge calibrate --onnx model.onnx --data pbc --manifest pbc/manifest.csv --precision int8 --target cpu \\
      --out model.int8-cpu.onnx
  wbc-edge calibrate --onnx model.onnx --data pbc --manifest pbc/manifest.csv --precision fp16 --out model.fp16.onnx

Needs the quantization tools: pip install 'wbc-edge[quantize]'
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wbc_edge.calibration.calibrate import CONVERSIONS, DEFAULT_METHODS, INT8_TARGETS
    from wbc_edge.calibration.dataset import DEFAULT_NUM_IMAGES, DEFAULT_SEED
    from wbc_edge.calibration.graph_prep import END_LAYERS

    parser.add_argument("--onnx", required=True, help="the FP32 ONNX model (from 'wbc-edge export')")
    parser.add_argument("--data", required=True, help="folder per class, or the root of the manifest's relative paths")
    parser.add_argument("--manifest", help="CSV with path,label,split[,sha256]: only split=train rows are used")
    parser.add_argument("--precision", required=True, choices=CONVERSIONS, help="what to make: fp16 or int8")
    parser.add_argument("--target", choices=INT8_TARGETS, default="tensorrt", help="INT8 only: who runs the model")
    parser.add_argument("--method", help="INT8 calibration method; if not given: "
                        + ", ".join(f"{m} for {t}" for t, m in DEFAULT_METHODS.items()))
    parser.add_argument("--num-images", type=int, default=None,
                        help=f"calibration images (default: 2048 for int8 --target tensorrt, {DEFAULT_NUM_IMAGES} otherwise)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the stratified draw")
    parser.add_argument("--keep-float", nargs="+", choices=END_LAYERS, default=[], metavar="LAYER",
                        help=f"INT8 only: layers kept in float ({', '.join(END_LAYERS)})")
    parser.add_argument("--out", required=True, help="output ONNX file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from wbc_edge.calibration.calibrate import calibrate

    result = calibrate(
        args.onnx, args.out, precision=args.precision, data=args.data, manifest=args.manifest,
        target=args.target, method=args.method, num_images=args.num_images, seed=args.seed,
        keep_float=args.keep_float, progress=not args.no_progress,
    )
    q = result.metadata.quantization or {}
    what = f"{result.metadata.precision}" + (f" for {q['target']} ({q['method']})" if result.metadata.precision == "int8" else "")
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, {what}), {result.path.with_suffix('.json').name} "
          f"and {result.record_path.name}: {q.get('num_images')} calibration images from the training split")
    return 0
