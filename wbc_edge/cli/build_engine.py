"""Compile an ONNX model into a TensorRT engine for this machine's GPU.

An engine is the fastest way to run the model on an NVIDIA GPU, and it is
made for one GPU model and one TensorRT version: build it on the analyzer
(or an identical machine), not on a workstation. Writes MODEL.engine and
MODEL.json beside it (class names, input size, normalization, precision,
the ONNX model's sha256, TensorRT version, GPU and compute capability, batch
profile, compatibility flags). Run it with 'wbc-edge classify --model
MODEL.engine' or Classifier.load("MODEL.engine").

Precision is the ONNX model's: build from default.fp16.onnx for FP16, from
default.int8-tensorrt.onnx (explicit Q/DQ) for INT8. The network is strongly
typed, which TensorRT 10.x (JetPack) and 11.x both build.

Batch profile: the engine accepts min..max images per call and is fastest at
opt. Set --opt-batch to the batch size you will run (classify's --batch-size);
larger batches are split by the runtime.

Needs TensorRT, cuda-python and an NVIDIA GPU with its driver:
pip install 'wbc-edge[tensorrt]' (on Jetson, TensorRT comes with JetPack).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
examples:
  wbc-edge build-engine --onnx default.int8-tensorrt.onnx --out cells.int8.engine
  wbc-edge build-engine --onnx default.fp16.onnx --out cells.fp16.engine --opt-batch 32 --max-batch 128 \\
      --timing-cache ~/.cache/wbc-edge/timing.cache          # rebuilds reuse kernel timings
  wbc-edge build-engine --onnx default.fp16.onnx --out cells.vc.engine --version-compatible
      # runs on later TensorRT versions, and on the ~100 MB lean runtime: pip install 'wbc-edge[tensorrt-lean]'

compatibility:
  By default an engine runs only on the TensorRT version and the GPU model that built it; wbc-edge checks
  both when loading and says what to do on a mismatch.
  --version-compatible      also runs on later TensorRT versions and on tensorrt_lean (may be a little slower)
  --exclude-lean-runtime    with --version-compatible: a smaller plan that needs exactly this TensorRT
                            version's lean runtime where it runs
  --hardware-compatible     ampere+: runs on any Ampere or newer GPU; same-cc: on any GPU of this compute
                            capability (both may be slower than an engine for one GPU model)
"""


def add_arguments(parser) -> None:
    parser.epilog = EPILOG
    # SUPPRESS: no "(default: None)" in --help for options without a default.
    parser.add_argument("--onnx", required=True, metavar="MODEL.onnx", default=argparse.SUPPRESS,
                        help="the ONNX model (made by 'wbc-edge export' or 'wbc-edge calibrate'), with its JSON beside it")
    parser.add_argument("--out", required=True, metavar="MODEL.engine", default=argparse.SUPPRESS,
                        help="the engine to write (.engine or .plan); its JSON is written beside it")
    parser.add_argument("--min-batch", type=int, default=1, metavar="N", help="smallest batch the engine accepts")
    parser.add_argument("--opt-batch", type=int, default=64, metavar="N",
                        help="the batch size TensorRT optimizes for: the one you will run")
    parser.add_argument("--max-batch", type=int, default=256, metavar="N",
                        help="largest batch per GPU call (sizes the runtime's buffers)")
    parser.add_argument("--workspace-mb", type=int, default=argparse.SUPPRESS, metavar="N",
                        help="cap on TensorRT's scratch memory while building and running (default: TensorRT's "
                             "own, up to the whole GPU)")
    parser.add_argument("--timing-cache", type=Path, default=argparse.SUPPRESS, metavar="PATH",
                        help="read kernel timings from PATH if it exists and save them back, so rebuilds are fast")
    parser.add_argument("--version-compatible", action="store_true",
                        help="build an engine that later TensorRT versions and the lean runtime can run")
    parser.add_argument("--exclude-lean-runtime", action="store_true",
                        help="with --version-compatible: leave the lean runtime out of the plan (smaller)")
    parser.add_argument("--hardware-compatible", nargs="?", const="ampere+", default="none",
                        choices=("none", "ampere+", "same-cc"),
                        help="run on other GPUs: ampere+ (the default when given alone) or same-cc")
    parser.add_argument("--profiles", type=int, default=2, metavar="N",
                        help="identical optimization profiles, one per batch the runtime keeps in flight "
                             "(TensorRT runs one execution context per profile at a time)")
    parser.add_argument("--device", type=int, default=0, metavar="N", help="the GPU to build on")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args) -> int:
    from ..export.build_engine import build_engine
    from ..metadata import sidecar_path

    meta = build_engine(
        args.onnx, args.out, min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
        workspace_mb=getattr(args, "workspace_mb", None), timing_cache=getattr(args, "timing_cache", None),
        version_compatible=args.version_compatible, exclude_lean_runtime=args.exclude_lean_runtime,
        hardware_compatible=args.hardware_compatible, device=args.device, profiles=args.profiles,
        progress=None if args.quiet else sys.stderr)
    record = meta.tensorrt
    size_mb = Path(args.out).stat().st_size / 2**20
    flags = [name for name, on in (("version-compatible", record["version_compatible"]),
                                   ("lean runtime excluded", record["exclude_lean_runtime"]),
                                   (f"hardware-compatible {record['hardware_compatibility']}",
                                    record["hardware_compatibility"] != "none")) if on]
    print(f"engine   {args.out} ({size_mb:.1f} MB, {meta.precision}, built in {record['build_seconds']} s)")
    print(f"metadata {sidecar_path(args.out)}")
    print(f"runs on  TensorRT {record['version']}, {record['gpu_name']} (compute capability "
          f"{record['compute_capability']}){', ' + ', '.join(flags) if flags else ''}")
    print(f"batches  {record['min_batch']}..{record['max_batch']}, fastest at {record['opt_batch']}; "
          f"{record['profiles']} in flight at once")
    return 0
