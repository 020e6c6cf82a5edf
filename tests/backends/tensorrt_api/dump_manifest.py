"""Dump a TensorRT Python API manifest (classes, members, kind, settable, pybind signatures, enum members).

Run by make_manifest.sh with the real bindings importable (over stubs/)."""

import inspect
import json
import sys

try:
    import tensorrt as trt
except ImportError:  # a bare bindings wheel installs as tensorrt_bindings
    import tensorrt_bindings as trt

out = {"version": trt.__version__, "classes": {}, "enums": {}}
for name, obj in sorted(vars(trt).items()):
    if not inspect.isclass(obj):
        continue
    members = getattr(obj, "__members__", None)
    if isinstance(members, dict) and members:
        out["enums"][name] = sorted(members)
    entry = {}
    for m in dir(obj):
        if m.startswith("__") and m not in ("__init__",):
            continue
        a = inspect.getattr_static(obj, m, None)
        if a is None:
            continue
        if isinstance(a, property):
            entry[m] = {"kind": "property", "settable": a.fset is not None}
        elif callable(getattr(obj, m, None)):
            doc = (getattr(obj, m).__doc__ or "").splitlines()
            sigs = [line.strip() for line in doc
                    if line.strip().startswith(m + "(") or (line.strip()[:1].isdigit() and (m + "(") in line)]
            entry[m] = {"kind": "method", "signatures": [
                s.replace("tensorrt_bindings.tensorrt.", "").replace("tensorrt_lean_bindings.tensorrt_lean.", "")
                for s in sigs if "*args" not in s]}
    out["classes"][name] = entry
with open(sys.argv[1], "w") as file:
    json.dump(out, file, indent=0, sort_keys=True)
print(sys.argv[1], len(out["classes"]), "classes", len(out["enums"]), "enums")
