"""Export a wbc-edge checkpoint to ONNX and verify it against PyTorch.

The ONNX model takes uint8 RGB images [N, H, W, 3] (N dynamic) named 'input'
and returns float32 'logits' [N, classes]; the graph itself casts, scales,
normalizes and transposes. The model metadata (classes, input size, mean/std,
resize policy, temperature, the checkpoint's sha256) is embedded in the ONNX
metadata_props and written beside it as a JSON file (model.onnx -> model.json).

After export the model is checked with onnx.checker and run with ONNX Runtime
on real cell images (--verify-images; default: the repository's examples/):
max |dlogit| must be <= 1e-4 x max |logit| and the top-1 class the same on
every image, or the command fails and writes nothing.

--weight-storage fp16 rounds the trained weights once to float16-representable
values and stores them as float16 + Cast: half the file size, float32 compute,
bit-identical weights (this is how the shipped model is made).

examples:
  wbc-edge export --checkpoint runs/r18/best.pt --out model.onnx
  wbc-edge export --checkpoint runs/r18/best.pt --out model.onnx --weight-storage fp16 --verify-images cells/
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from wbc_edge.export.onnx_export import DEFAULT_OPSET, WEIGHT_STORAGES

    parser.add_argument("--checkpoint", required=True, help="wbc-edge checkpoint (.pt) from 'wbc-edge train'")
    parser.add_argument("--out", required=True, help="output ONNX file (.onnx); the metadata goes beside it (.json)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument("--weight-storage", choices=WEIGHT_STORAGES, default="fp32",
                        help="fp16: weights rounded to float16 values and stored as float16 + Cast "
                             "(half the size, float32 compute)")
    parser.add_argument("--verify-images", metavar="DIR",
                        help="folder of real cell images to verify the export on; if not given, the "
                             "repository's examples/ folder")
    parser.add_argument("--json", action="store_true", help="print the export summary as JSON")


def run(args: argparse.Namespace) -> int:
    from wbc_edge.export.onnx_export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.out, opset=args.opset, weight_storage=args.weight_storage,
                               verify_images=args.verify_images)
    if args.json:
        print(json.dumps(result.summary(), indent=2))
        return 0
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB) and {result.summary()['sidecar']}")
    if result.rounding is not None:
        print(f"weights rounded to float16 values: {result.rounding['rounded']} tensors, largest relative change "
              f"{result.rounding['max_relative_change']:.2g}; {len(result.weights_fp16)} initializers stored as float16")
    print(f"verified: {result.parity.describe()}")
    return 0
