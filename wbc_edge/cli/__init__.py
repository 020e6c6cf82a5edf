"""The ``wbc-edge`` command: one subcommand per module in this folder.

Each module defines ``add_arguments(parser)`` and ``run(args) -> int`` and
imports its heavy libraries (torch, onnx, tensorrt) inside ``run``, so that
``wbc-edge --help`` and ``wbc-edge classify`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import WbcEdgeError

# name -> (module in wbc_edge.cli, one-line help), in the order --help lists them.
COMMANDS = {
    "classify": ("classify", "classify cell images and print the differential count"),
    "info": ("info", "show versions, usable backends, GPU and the shipped model"),
    "evaluate": ("evaluate", "measure a model on labelled images (accuracy, confusion matrix, ECE)"),
    "train": ("train", "train a ResNet-18 on a folder per class or a manifest"),
    "adapt": ("adapt", "adapt a model to a new lab from its own cells (labelled, corrected or unlabelled)"),
    "export": ("export", "export a checkpoint to ONNX (uint8 NHWC input) and verify it"),
    "calibrate": ("calibrate", "make FP16 or INT8 (calibrated) ONNX models"),
    "compare": ("compare", "compare two models on the same labelled images"),
    "build-engine": ("build_engine", "compile an ONNX model into a TensorRT engine"),
    "export-triton": ("export_triton", "write a Triton Inference Server model repository (ONNX Runtime and TensorRT)"),
    "review": ("review", "review a report's cells on a local web page, correct them and sign off"),
    "benchmark": ("benchmark", "measure throughput and latency per batch size and concurrency"),
}

EPILOG = """\
examples:
  wbc-edge classify examples/                     classify images with the shipped model
  wbc-edge classify cells/ --out report.json      ... and write the full report
  wbc-edge review report.json                     check and correct the cells on a local web page
  wbc-edge info                                   what this machine can run
  wbc-edge train --data pbc --manifest pbc/manifest.csv --out runs/r18
  wbc-edge export --checkpoint runs/r18/best.pt --out model.onnx
  wbc-edge calibrate --onnx model.onnx --data pbc --manifest pbc/manifest.csv --precision int8 --out model.int8.onnx

Run 'wbc-edge COMMAND --help' for a command's options.
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the layout of descriptions and epilogs."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="wbc-edge",
        description="White-blood-cell classification at the edge: classify cell images, and train, "
                    "export, quantize and compile the model that does it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wbc-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        command = sub.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=HelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code = int(args.run(args) or 0)
        if sys.stdout is not None:
            sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        return code
    except WbcEdgeError as error:
        print(f"wbc-edge {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wbc-edge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`wbc-edge classify ... | head`): a normal end,
        # since every command writes its files before it prints; keep Python
        # from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
