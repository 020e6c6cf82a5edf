"""Show what this machine can run: wbc-edge and dependency versions, the
backends usable here (and why not, with the install command), NVIDIA GPUs,
and the shipped default model (classes, input size, precisions and files).

--json prints the same as one JSON object (keys: wbc_edge, python, platform,
cpu, packages, gpu, backends, default_model).

examples:
  wbc-edge info                     what this machine can run, and what to install for the rest
  wbc-edge info --json | jq .backends
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from ..environment import describe_environment

    info = describe_environment()
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
        lines.append(f"  precisions: {', '.join(model['precisions'])}; default on CPU: {model['default_precision_cpu']}")
        for variant, v in model["variants"].items():
            lines.append(f"  {variant:<14}{v['size_mb']:>6.1f} MB  {v['path']}")
        for variant in model["not_shipped"]:
            lines.append(f"  {variant:<14}not shipped (wbc-edge info --json shows the command that makes it)")
    return "\n".join(lines)
