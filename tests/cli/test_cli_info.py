"""`wbc-edge info`: versions, usable backends with reasons, GPU, shipped model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL

from wbc_edge import __version__, models
from wbc_edge.backends import BACKENDS, library_available
from wbc_edge.cli import main


def info_json(capsys) -> dict:
    assert main(["info", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_fields(capsys):
    info = info_json(capsys)
    assert info["wbc_edge"]["version"] == __version__
    assert info["python"] == sys.version.split()[0]
    assert info["packages"]["numpy"] == np.__version__
    assert info["packages"]["pillow"] == PIL.__version__
    assert set(info["backends"]) == set(BACKENDS)
    for name, status in info["backends"].items():
        assert isinstance(status["usable"], bool)
        if not status["usable"]:
            assert status["reason"], name  # always says why not
    assert info["backends"]["onnxruntime"]["usable"] == library_available("onnxruntime")
    if not library_available("onnxruntime"):
        assert "pip install" in info["backends"]["onnxruntime"]["install"]
    assert isinstance(info["gpu"]["devices"], list)
    if not info["gpu"]["devices"]:
        assert info["gpu"]["reason"]
        assert not info["backends"]["tensorrt"]["usable"] and "no NVIDIA GPU" in info["backends"]["tensorrt"]["reason"]


def test_default_model_fields(capsys):
    model = info_json(capsys)["default_model"]
    shipped = models.shipped_models()
    if not shipped:
        assert model is None
        return
    meta = json.loads(next(iter(shipped.values())).metadata_path.read_text())
    assert model["classes"] == meta["classes"]
    assert model["input_size"] == meta["input_size"] and len(model["input_size"]) == 2  # [H, W]
    assert set(model["variants"]) == set(shipped)
    assert model["precisions"] == sorted({s.precision for s in shipped.values()},
                                         key=["fp32", "fp16", "int8"].index)
    for variant, entry in model["variants"].items():
        assert Path(entry["path"]).is_file() and Path(entry["metadata"]).is_file()
        assert entry["precision"] == shipped[variant].precision
    assert model["default_precision_cpu"] == models.default_precision("onnxruntime")
    assert set(model["not_shipped"]) == set(models.VARIANTS) - set(shipped)


def test_gpu_matches_nvidia_smi(capsys):
    gpu = info_json(capsys)["gpu"]
    if shutil.which("nvidia-smi") is None:
        assert gpu["source"] != "nvidia-smi"
        return
    names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True).stdout.split("\n")
    assert [d["name"] for d in gpu["devices"]] == [n.strip() for n in names if n.strip()]


def test_text_output(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for heading in ("packages:", "gpu:", "backends:", "default model:"):
        assert heading in out
    for backend in BACKENDS:
        assert backend in out


def test_info_does_not_import_torch_without_a_gpu():
    code = ("import sys; from wbc_edge.environment import describe_environment; info = describe_environment(); "
            "print(bool(info['gpu']['devices']), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    has_gpu, imported_torch = out[0] == "True", out[1] == "True"
    assert has_gpu or not imported_torch
