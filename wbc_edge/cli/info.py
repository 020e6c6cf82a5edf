"""Show what this machine can run: wbc-edge and dependency versions, the
backends usable here (and why not, with the install command), NVIDIA GPUs,
and the shipped default model (classes, input size, precisions and files).

--json prints the same as one JSON object (keys: wbc_edge, python, platform,
cpu, packages, gpu, backends, default_model, cpu_engine).

cpu_engine: the engine --backend auto runs each CPU model on (onnxruntime, or
openvino where a cached probe measured it faster on this CPU, thread count and
model file), and why. --probe measures it now (both engines on the model, a
few seconds per model) and caches the result for later runs.

examples:
  wbc-edge info                     what this machine can run, and what to install for the rest
  wbc-edge info --json | jq .backends
  wbc-edge info --probe             time onnxruntime vs openvino on the shipped models; auto then runs the faster
  wbc-edge info --probe --model models/my-lab --threads 4
  wbc-edge info --probe --threads 16 --streams 4    probe as 'classify --threads 16 --streams 4' runs
"""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--probe", action="store_true",
                        help="time the CPU engines (onnxruntime, openvino) on the models and cache which is faster")
    parser.add_argument("--model", help="the model (ONNX file or model directory) for the CPU engine choice; "
                                        "None: the shipped ones")
    parser.add_argument("--threads", type=int, help="inference threads to probe with; None: all usable CPUs")
    parser.add_argument("--streams", type=int, metavar="N",
                        help="batches inferred at once to probe with, as 'classify --streams' runs them; None: 1")


def run(args: argparse.Namespace) -> int:
    from ..backends.probe import cpu_engine_info
    from ..environment import describe_environment
    from ..errors import WbcEdgeError

    if args.threads is not None and args.threads < 1:
        raise WbcEdgeError(f"--threads must be at least 1, got {args.threads}")
    if args.streams is not None and args.streams < 1:
        raise WbcEdgeError(f"--streams must be at least 1, got {args.streams}")
    if args.model is not None and not os.path.exists(args.model):
        raise WbcEdgeError(f"{args.model}: model file not found")
    info = describe_environment()
    info["cpu_engine"] = cpu_engine_info(args.model, args.threads, streams=args.streams, run_probe=args.probe)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def format_info(info: dict) -> str:
    lines = [f"wbc-edge {info['wbc_edge']['version']}  ({info['wbc_edge']['location']})",
             f"python {info['python']} on {info['platform']}, "
             f"{info['cpu']['usable']} of {info['cpu']['cores']} CPU cores usable", "", "packages:"]
    for name, version in info["packages"].items():
        lines.append(f"  {name:<16}{version or '-'}")
    gpu = info["gpu"]
    lines += ["", "gpu:"]
    if gpu["devices"]:
        for d in gpu["devices"]:
            extra = ", ".join(x for x in (f"{d['memory_mib']} MiB" if d["memory_mib"] else "",
                                          f"compute {d['compute_capability']}" if d["compute_capability"] else "") if x)
            lines.append(f"  {d['name']}" + (f" ({extra})" if extra else ""))
        if gpu["driver"]:
            lines.append(f"  driver {gpu['driver']}")
    else:
        lines.append(f"  none ({gpu['reason']})")
    lines += ["", "backends:"]
    for name, status in info["backends"].items():
        state = "usable" if status["usable"] else "not usable"
        detail = status.get("reason")
        if name == "onnxruntime" and status["usable"]:
            detail = ", ".join(status["providers"])
        elif name == "torch" and status["usable"] and not detail:
            detail = ", ".join(status["devices"])
        lines.append(f"  {name:<12}{state}" + (f": {detail}" if detail else ""))
        if status.get("install"):
            lines.append(f"  {'':<12}install: {status['install']}")
    model = info["default_model"]
    lines += ["", "default model:"]
    if model is None:
        lines.append("  none shipped in this install (pass --model PATH)")
    else:
        lines.append(f"  {model['name']}: {len(model['classes'])} classes ({', '.join(model['classes'])}), "
                     f"input {model['input_size'][0]}x{model['input_size'][1]}, temperature {model['temperature']:.3f}")
        why = "" if model["int8_cpu_exact_here"] else " (this CPU has no VNNI or AMX: INT8-CPU would saturate here)"
        lines.append(f"  precisions: {', '.join(model['precisions'])}; default on CPU: {model['default_precision_cpu']}{why}")
        for variant, v in model["variants"].items():
            lines.append(f"  {variant:<14}{v['size_mb']:>6.1f} MB  {v['path']}")
        for variant in model["not_shipped"]:
            lines.append(f"  {variant:<14}not shipped (wbc-edge info --json shows the command that makes it)")
    engine = info["cpu_engine"]
    lines += ["", f"cpu engine (--backend auto, {engine['num_threads']} threads in {engine['streams']} "
                  f"stream{'s' * (engine['streams'] > 1)}):"]
    for name, entry in info["cpu_engine"]["models"].items():
        lines.append(f"  {name:<14}{entry['reason']}")
    return "\n".join(lines)
