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


@dataclass(frozen=True)
class Call:
    """How the code calls something: ``args`` positional arguments and these
    keywords; ``takes``: how many values it unpacks from the result (None: not
    checked); ``where``: file:line."""

    args: int
    keywords: frozenset[str]
    where: str
    takes: int | None = None


@dataclass
class Usage:
    module_paths: set[tuple[str, ...]] = field(default_factory=set)   # ("DataType", "UINT8") for trt.DataType.UINT8
    members: set[tuple[str, str]] = field(default_factory=set)        # ("ICudaEngine", "get_tensor_name")
    optional: set[tuple[str, str]] = field(default_factory=set)       # getattr(obj, "name", default): may be absent
    overrides: set[tuple[str, str]] = field(default_factory=set)      # ("IProgressMonitor", "phase_start")
    # How each member is used: called (with its arguments), assigned, or only read.
    calls: dict[tuple[str, str], list[Call]] = field(default_factory=dict)
    stores: set[tuple[str, str]] = field(default_factory=set)
    reads: set[tuple[str, str]] = field(default_factory=set)


def _trees(paths: list[Path]):
    """(path, syntax tree) of each source file."""
    for path in paths:
        yield path, ast.parse(path.read_text(), filename=str(path))


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def _call(node: ast.Call, path: Path, takes: int | None = None) -> Call:
    if any(isinstance(arg, ast.Starred) for arg in node.args) or any(k.arg is None for k in node.keywords):
        raise ValueError(f"{path.name}:{node.lineno}: *args/**kwargs hide the call's shape from this reader")
    return Call(len(node.args), frozenset(k.arg for k in node.keywords), f"{path.name}:{node.lineno}", takes)


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
    for path, tree in _trees(paths):
        parents = _parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                chain = _chain(node)
                if chain and chain[0] == "trt":
                    usage.module_paths.add(tuple(chain[1:]))
                owner = _receiver(node.value, receivers)
                if owner:
                    member = (owner, node.attr)
                    usage.members.add(member)
                    parent = parents.get(node)
                    if isinstance(parent, ast.Call) and parent.func is node:
                        usage.calls.setdefault(member, []).append(_call(parent, path))
                    elif isinstance(node.ctx, ast.Store):
                        usage.stores.add(member)
                    else:
                        usage.reads.add(member)
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


def _takes(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> int | None:
    """How many values the code unpacks from the cuda-python call ``node``:
    ``err, graph = rt.f()`` takes 2; ``free, total = check(rt.f(), ...)`` 3
    (check drops the error); ``x = check(rt.f(), ...)`` or any other use of
    check's value 2; ``check(rt.f(), ...)`` as a statement: not checked."""
    parent = parents.get(node)
    through_check = (isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name)
                     and parent.func.id == "check" and parent.args and parent.args[0] is node)
    if through_check:
        node, parent = parent, parents.get(parent)
    if isinstance(parent, ast.Assign) and parent.value is node and isinstance(parent.targets[0], ast.Tuple):
        elements = parent.targets[0].elts
        if any(isinstance(e, ast.Starred) for e in elements):
            return None
        return len(elements) + through_check
    if through_check:
        return None if isinstance(parent, ast.Expr) else 2
    return None


def cuda_runtime_calls(paths: list[Path]) -> dict[str, list[Call]]:
    """Every call of a cuda-python runtime function (``rt.f(...)`` or
    ``cudart().f(...)``), with its arguments and what is unpacked from it."""
    calls: dict[str, list[Call]] = {}
    for path, tree in _trees(paths):
        parents = _parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                chain = _chain(node.func)
                if chain and chain[0] in ("rt", "cudart()") and len(chain) == 2:
                    calls.setdefault(chain[1], []).append(_call(node, path, _takes(node, parents)))
    return calls


def cuda_struct_reads(paths: list[Path], receivers: dict[str, str]) -> set[tuple[str, str]]:
    """Fields read from cuda-python structs held in variables named as in
    ``receivers`` (``prop`` -> ``cudaDeviceProp``)."""
    used = set()
    for _, tree in _trees(paths):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in receivers:
                used.add((receivers[node.value.id], node.attr))
    return used


CUDA_STRUCT_RECEIVERS = {"prop": "cudaDeviceProp"}


def cuda_runtime_usage(paths: list[Path]) -> set[tuple[str, ...]]:
    """Attribute paths used on the cuda-python runtime module (``rt.x.y`` or ``cudart().x``)."""
    used = set()
    for _, tree in _trees(paths):
        for node in ast.walk(tree):
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
BUILD_FILES = [REPO / "wbc_edge" / "export" / "build_engine.py", REPO / "wbc_edge" / "export" / "build_progress.py"]
CUDA_FILES = [REPO / "wbc_edge" / "backends" / name for name in ("cuda.py", "cuda_pipeline.py", "tensorrt.py")]


# --- what the bindings accept ---------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """One documented way to call a function (``self`` left out)."""

    names: tuple[str, ...]
    required: int            # leading parameters without a default
    variadic: bool = False   # *args / **kwargs: anything goes

    def accepts(self, call: Call) -> bool:
        if self.variadic:
            return True
        if call.args > len(self.names) or not call.keywords <= set(self.names[call.args:]):
            return False
        given = set(self.names[:call.args]) | call.keywords
        return all(name in given for name in self.names[:self.required])


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{<"
        depth -= char in ")]}>"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [part.strip() for part in [*parts, current] if part.strip()]


def pybind_signatures(function, name: str) -> list[Signature]:
    """The signatures in a pybind11 docstring (``name(self: T, a: int, b: X = ...) -> R``,
    one per overload)."""
    signatures = []
    for line in (function.__doc__ or "").splitlines():
        line = line.strip()
        head = line.split(". ", 1)[1] if line[:1].isdigit() and ". " in line else line
        if not head.startswith(name + "("):
            continue
        inside = head[len(name) + 1:head.rindex(") ->") if ") ->" in head else head.rindex(")")]
        params = [p for p in _split_top_level(inside) if not p.startswith("self")]
        if params == ["*args", "**kwargs"]:
            continue  # the "Overloaded function." header; its overloads follow
        if any(p.startswith("*") for p in params):
            signatures.append(Signature((), 0, variadic=True))
            continue
        names = tuple(p.split(":", 1)[0].split("=", 1)[0].strip() for p in params)
        defaults = [" = " in p or p.endswith("=") for p in params]
        required = defaults.index(True) if True in defaults else len(params)
        signatures.append(Signature(names, required))
    return signatures


def cython_signature(function) -> Signature:
    """A cuda-python function's signature (Cython embeds it: ``inspect.signature`` reads it)."""
    import inspect

    params = list(inspect.signature(function).parameters.values())
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return Signature((), 0, variadic=True)
    required = sum(1 for p in params if p.default is p.empty)
    return Signature(tuple(p.name for p in params), required)


def documented_returns(function) -> int:
    """How many values a cuda-python function returns: the entries of its
    docstring's ``Returns`` section (the cudaError_t first)."""
    lines = (function.__doc__ or "").splitlines()
    start = next(i for i in range(len(lines) - 1) if lines[i].strip() == "Returns" and set(lines[i + 1].strip()) == {"-"})
    count = 0
    for line in lines[start + 2:]:
        if not line.strip():
            break
        if not line.startswith(" "):  # an entry; its description is indented
            count += 1
    return count
