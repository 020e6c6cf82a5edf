"""Write a Triton Inference Server model repository for a wbc-edge model.

REPO holds two models, both configured from the model's metadata (input name
and shape, outputs, labels, batching):

  NAME            onnxruntime_onnx: config.pbtxt, labels.txt, 1/model.onnx (the
                  INT8-CPU variant by default, whatever CPU exports; --precision
                  fp32 for the FP32 one, for servers without VNNI or AMX).
                  Runs on any Triton server, CPU or GPU.
  NAME_tensorrt   tensorrt_plan: config.pbtxt, labels.txt, the ONNX to build
                  from, and build-engine.sh, the exact 'wbc-edge build-engine'
                  command that makes 1/model.plan on the GPU that will serve it
                  (batch profile 1..--max-batch-size). Build it before starting
                  the server, with the TensorRT version of that server.

Outputs: logits [classes] with label_filename (Triton's classification
extension gives "score:index:label"), and ood_score [1] and cam [classes, h, w]
where the model has its domain guard or activation maps. Dynamic batching
(preferred sizes a quarter, half and all of --max-batch-size, a short queue
delay), --instances per model, warm-up at batch 1 and --max-batch-size. The
wbc-edge metadata rides in the config (parameter wbc_edge_metadata), so
'wbc-edge classify --model grpc://HOST:8001/NAME' gives the same report as a
local run. REPO is built beside itself and renamed at the end; an existing
REPO is replaced only with --force.
"""

from __future__ import annotations

import argparse

from ..export.triton_repository import DEFAULT_MAX_BATCH_SIZE, DEFAULT_NAME, DEFAULT_QUEUE_DELAY_US

EPILOG = """\
examples:
  wbc-edge export-triton --out triton-models                       # the shipped model (INT8 CPU, INT8 TensorRT)
  wbc-edge export-triton --out triton-models --model models/my-lab --precision fp32 --force
  wbc-edge export-triton --out triton-models --max-batch-size 128 --instances 2

then, on the server:
  sh triton-models/wbc_resnet18_tensorrt/build-engine.sh           # on the GPU that serves it
  docker run --gpus all -p8000:8000 -p8001:8001 -v $PWD/triton-models:/models \\
      nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models
and on a client:
  wbc-edge classify cells/ --model grpc://SERVER:8001/wbc_resnet18_tensorrt
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("--out", required=True, metavar="REPO", default=argparse.SUPPRESS,
                        help="the model repository folder to write (must not exist, unless --force)")
    parser.add_argument("--model", metavar="M", default=argparse.SUPPRESS,
                        help="a wbc-edge ONNX model or a model directory from 'wbc-edge adapt' "
                             "(default: the shipped model)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=argparse.SUPPRESS,
                        help="with the shipped model or a model directory: the variant (default: int8 where shipped)")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help="the Triton model name (the TensorRT model is NAME_tensorrt)")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE, metavar="N",
                        help="the largest batch Triton forms (and the engine's profile maximum)")
    parser.add_argument("--instances", type=int, default=1, metavar="N",
                        help="model instances per model (instance_group count)")
    parser.add_argument("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US, metavar="US",
                        help="how long Triton waits to gather a larger batch, in microseconds")
    parser.add_argument("--force", action="store_true", help="replace REPO if it exists")


def run(args: argparse.Namespace) -> int:
    from ..errors import require
    from ..export.triton_repository import export_triton

    require("onnx", "the onnx package", "pip install 'wbc-edge[export]'")
    result = export_triton(args.out, getattr(args, "model", None), precision=getattr(args, "precision", None),
                           name=args.name, max_batch_size=args.max_batch_size, instances=args.instances,
                           queue_delay_us=args.queue_delay_us, force=args.force)
    meta = result.metadata
    print(f"Triton model repository: {result.out}  ({meta.name}, {meta.num_classes} classes, "
          f"outputs {', '.join(meta.output_columns)})")
    for name, folder in result.models.items():
        platform = result.manifest["models"][name]["platform"]
        print(f"  {name:<28} {platform:<17} {folder}")
    if result.build_command:
        print("build the TensorRT plan on the serving GPU (TensorRT of the Triton server's version):")
        print(f"  {result.build_command}")
    if result.tensorrt_skipped:
        print(f"no TensorRT model: {result.tensorrt_skipped}")
    print(f"serve: tritonserver --model-repository={result.out}   "
          f"(CPU only: --model-control-mode=explicit --load-model={result.name})")
    print(f"classify: wbc-edge classify CELLS --model grpc://HOST:8001/{result.name}")
    return 0
