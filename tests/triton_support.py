"""A real Triton Inference Server on 127.0.0.1 for the tests.

The server is the ``tritonserver`` binary that PyTriton (``nvidia-pytriton``)
embeds. That wheel ships Triton's Python backend only, not its onnxruntime
backend, so the exported repository is served with one change: the
``onnxruntime_onnx`` model's ``platform`` line becomes ``backend: "python"``
and its version folder gets :data:`MODEL_PY`, which runs the exported
``1/model.onnx`` with onnxruntime. Everything else in the generated
``config.pbtxt`` (input and outputs, ``label_filename``, dynamic batching,
instance group, warm-up, the wbc-edge metadata parameter) is what Triton
itself parses and serves.

Known trap: the Python backend's stub links the system ``libpython3.X``; when
the interpreter is another patch release (pyenv beside Debian's), the model
fails to load (``'_thread.RLock' object has no attribute '_recursion_count'``).
The running interpreter's own library folder goes first on
``LD_LIBRARY_PATH``. The stub's interpreter ignores ``PYTHONPATH`` and takes
its prefix from the ``python3`` first on ``PATH``: the running interpreter's
folder goes first there, so the model imports this environment's numpy and
onnxruntime (not, say, a numpy 2 of the base interpreter, which gives empty
output tensors without an error).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The Python backend model that stands in for Triton's onnxruntime backend.
#: Test-only knobs (config parameters): ``test_delay_s`` with
#: ``test_delay_marker`` (a file made once) make the first execution of
#: non-blank images, in any instance, that slow (a timeout to retry); every execution's batch size is appended to ``test_batch_log``.
MODEL_PY = '''\
import json
import os
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.outputs = [o["name"] for o in config["output"]]
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.delay = float(parameters.get("test_delay_s", 0))
        self.delay_marker = parameters.get("test_delay_marker")
        self.log = parameters.get("test_batch_log")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        if self.delay_marker and any(a.any() for a in arrays):  # not the warm-up's or the checks' zeros
            try:  # the first such execution of any instance sleeps, once
                os.close(os.open(self.delay_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                time.sleep(self.delay)
            except FileExistsError:
                pass
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps(sizes) + "\\n")
        results = self.session.run(self.outputs, {self.input: np.concatenate(arrays)})
        responses, start = [], 0
        for n in sizes:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(r[start:start + n]))
                       for name, r in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
'''


def pytriton_dir() -> Path | None:
    """PyTriton's embedded server folder, or None when PyTriton is not installed."""
    try:
        import pytriton
    except ImportError:
        return None
    folder = Path(pytriton.__file__).parent / "tritonserver"
    return folder if (folder / "bin" / "tritonserver").is_file() else None


def require_module(name: str, install: str = "pip install -e '.[test]'"):
    """The module; skips without it, except in CI (env CI set), where the triton tests never skip."""
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        message = f"{name} is not installed: {install}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI runs the triton tests, never skips them)")
        pytest.skip(message)


def require_pytriton() -> Path:
    """The server folder; skips without PyTriton, except in CI (env CI set), where it fails."""
    folder = pytriton_dir()
    if folder is None:
        message = "PyTriton (the embedded Triton server) is not installed: pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI runs the triton tests, never skips them)")
        pytest.skip(message)
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served_repository(exported: Path, target: Path, name: str, served_name: str | None = None,
                      edit=None, **parameters: str) -> Path:
    """A copy of the exported ``name`` model that the embedded server can run
    (see the module docstring), as ``served_name`` (default: ``name``), its
    config passed through ``edit(text) -> text`` if given, with ``parameters``
    added."""
    target.mkdir(parents=True, exist_ok=True)
    served_name = served_name or name
    model = target / served_name
    shutil.copytree(exported / name, model)
    config = (model / "config.pbtxt").read_text()
    config, count = re.subn(r'^platform: "onnxruntime_onnx"$', 'backend: "python"', config, flags=re.M)
    assert count == 1, "the exported config names platform onnxruntime_onnx once"
    config = config.replace(f'name: "{name}"\n', f'name: "{served_name}"\n', 1)
    if edit is not None:
        config = edit(config)
    for key, value in parameters.items():
        config += f'parameters {{ key: "{key}" value: {{ string_value: {json.dumps(str(value))} }} }}\n'
    (model / "config.pbtxt").write_text(config)
    (model / "1" / "model.py").write_text(MODEL_PY)
    return target


@dataclass
class TritonServer:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(repository: Path, workdir: Path, timeout: float = 90.0) -> TritonServer:
    """Starts the embedded tritonserver on 127.0.0.1 (free ports) over
    ``repository`` and waits until it is ready (every model loaded)."""
    dist = require_pytriton()
    backends = workdir / "backends"
    shutil.copytree(dist / "backends", backends, dirs_exist_ok=True)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        pytest.fail(f"PyTriton has no Python backend stub for Python {version}")
    shutil.copy(stub, backends / "python" / "triton_python_backend_stub")
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR"), str(dist.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    # the stub's interpreter takes its prefix (and so site-packages) from the python3 found on PATH
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    http_port, grpc_port = free_port(), free_port()
    log_path = workdir / "tritonserver.log"
    command = [str(dist / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={backends}", f"--cache-directory={dist / 'caches'}",
               "--http-address=127.0.0.1", f"--http-port={http_port}",
               "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}",
               "--allow-metrics=false", "--allow-sagemaker=false", "--allow-vertex-ai=false",
               "--exit-on-error=true", "--exit-timeout-secs=5", "--strict-readiness=true", "--log-verbose=0"]
    log = open(log_path, "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    log.close()
    server = TritonServer(process, http_port, grpc_port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"tritonserver was not ready within {timeout:.0f} s:\n{server.log()[-4000:]}")


def tiny_model(folder: Path, name: str = "tiny") -> Path:
    """A small wbc-edge ONNX model with a domain guard and activation maps:
    uint8 [N, 16, 16, 3] -> per-channel means -> one linear layer -> one output
    tensor ``scores`` with 3 logits | ood_score | 3x2x2 maps (16 columns), its
    metadata embedded and beside it. Fast to load and to serve."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from wbc_edge.metadata import ONNX_METADATA_KEY, ModelMetadata

    meta = ModelMetadata(classes=["blast", "band", "smudge"], input_size=(16, 16), mean=(0.5, 0.5, 0.5),
                         std=(0.25, 0.25, 0.25), temperature=1.5, name="tiny-guarded",
                         domain_guard={"method": "test", "threshold": 200.0}, cam={"shape": [3, 2, 2], "layer": "test"})
    columns = meta.num_outputs
    rng = np.random.default_rng(7)
    weights = rng.normal(0, 1, (3, columns)).astype(np.float32)
    bias = rng.normal(0, 1, (columns,)).astype(np.float32)
    weights[:, 3], bias[3] = 1 / 3, 0.0  # ood_score: the image's brightness (0..255); the guard flags > 200
    nodes = [
        helper.make_node("Cast", ["pixels"], ["pixels_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels_f"], ["means"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["means", "weights"], ["product"]),
        helper.make_node("Add", ["product", "bias"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 16, 16, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", columns])],
        [onnx.numpy_helper.from_array(weights, "weights"), onnx.numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key=ONNX_METADATA_KEY, value=meta.to_json())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    meta.save(path.with_suffix(".json"))
    return path
