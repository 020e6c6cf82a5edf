"""Which TensorRT and cuda-python names the wbc-edge code uses, read from the
source itself (its syntax tree), so the API-conformance tests cannot drift
from the code they check.

Conventions the code keeps (and these readers rely on): the TensorRT module is
always ``trt``; TensorRT objects live in variables named after their class
(``engine``, ``context``, ``runtime``, ``builder``...); the cuda-python runtime
module is ``rt = cudart()`` or ``cudart()``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: variable name (leading underscores dropped) -> the TensorRT class it holds
RUNTIME_RECEIVERS = {"engine": "ICudaEngine", "context": "IExecutionContext", "runtime": "Runtime"}
BUILD_RECEIVERS = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser", "config": "IBuilderConfig",
    "profile": "IOptimizationProfile", "error": "ParserError", "layer": "ILayer", "tensor_in": "ITensor",
    "tensor_out": "ITensor",
}


@dataclass
class Usage:
    module_paths: set[tuple[str, ...]] = field(default_factory=set)   # ("DataType", "UINT8") for trt.DataType.UINT8
    members: set[tuple[str, str]] = field(default_factory=set)        # ("ICudaEngine", "get_tensor_name")
    optional: set[tuple[str, str]] = field(default_factory=set)       # getattr(obj, "name", default): may be absent
    overrides: set[tuple[str, str]] = field(default_factory=set)      # ("IProgressMonitor", "phase_start")


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; a call ``cudart().x`` -> ["cudart()", "x"]."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        parts.append(node.func.id + "()")
    else:
        return None
    return parts[::-1]


def _receiver(node: ast.AST, receivers: dict[str, str]) -> str | None:
    """The TensorRT class held by ``engine``, ``self._engine`` or ``type(engine)``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type" and node.args:
        node = node.args[0]
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    return receivers.get(name.lstrip("_")) if name else None


def tensorrt_usage(paths: list[Path], receivers: dict[str, str]) -> Usage:
    usage = Usage()
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                chain = _chain(node)
                if chain and chain[0] == "trt":
                    usage.module_paths.add(tuple(chain[1:]))
                owner = _receiver(node.value, receivers)
                if owner:
                    usage.members.add((owner, node.attr))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("hasattr", "getattr") and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                owner = _receiver(node.args[0], receivers)
                if owner:
                    target = usage.optional if node.func.id == "getattr" and len(node.args) == 3 else usage.members
                    target.add((owner, node.args[1].value))
            elif isinstance(node, ast.ClassDef):
                for base in node.bases:
                    chain = _chain(base)
                    if chain and chain[0] == "trt" and len(chain) == 2:
                        for item in node.body:
                            if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                                usage.overrides.add((chain[1], item.name))
    return usage


def cuda_runtime_usage(paths: list[Path]) -> set[tuple[str, ...]]:
    """Attribute paths used on the cuda-python runtime module (``rt.x.y`` or ``cudart().x``)."""
    used = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Attribute):
                chain = _chain(node)
                if chain and chain[0] in ("rt", "cudart()"):
                    used.add(tuple(chain[1:]))
    return used


def resolve(root, path: tuple[str, ...]) -> bool:
    """Whether ``root.a.b...`` exists."""
    obj = root
    for name in path:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


RUNTIME_FILES = [REPO / "wbc_edge" / "backends" / "tensorrt.py"]
BUILD_FILES = [REPO / "export" / "build_engine.py", REPO / "export" / "build_progress.py"]
CUDA_FILES = [REPO / "wbc_edge" / "backends" / name for name in ("cuda.py", "cuda_pipeline.py", "tensorrt.py")]
