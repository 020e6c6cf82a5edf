"""What is installed, found without importing it: the one probe that
``wbc-edge info``, the backends and ``build-engine`` share.

A library is installed when Python can find its module (``find_spec``);
whether it then works (a GPU, a driver) is for its user to find out.
"""

from __future__ import annotations

import importlib.util

#: library -> the modules that provide it (any one is enough)
LIBRARIES = {
    "onnxruntime": ("onnxruntime",),
    "torch": ("torch",),
    "tensorrt": ("tensorrt",),
    "tensorrt_lean": ("tensorrt_lean",),
    "cuda-python": ("cuda.bindings", "cuda.cudart"),
}


def module_spec(module: str):
    """The module's import spec, or None when it is not installed."""
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a parent package missing, or a broken one
        return None


def installed(module: str) -> bool:
    """Whether the module can be imported by name (without importing it)."""
    return module_spec(module) is not None


def has(library: str) -> bool:
    """Whether one of ``LIBRARIES[library]``'s modules is installed."""
    return any(installed(module) for module in LIBRARIES.get(library, (library,)))
