"""Triton Inference Server backend: the model runs on a server, the SDK stays the same.

    Classifier.load("grpc://gpu-server:8001/wbc_resnet18")     # KServe v2 over gRPC
    Classifier.load("http://gpu-server:8000/wbc_resnet18")     # ... over HTTP
    wbc-edge classify cells/ --model grpc://gpu-server:8001/wbc_resnet18

The URL names the server and the model (``.../NAME`` or ``.../NAME/VERSION``;
the KServe path ``/v2/models/NAME[/versions/V]`` works too). Decoding and the
C++ preprocessing run here, as for a local model; the server gets the
model-ready uint8 ``[n, H, W, 3]`` batch and answers with the model's outputs
by name (``logits``, and ``ood_score``, ``cam`` where the model has them: the
layout ``wbc-edge export-triton`` writes), which the runner puts back into the
model's output rows (``metadata.output_columns``).

The model's metadata comes from the server: the config parameter
``wbc_edge_metadata`` that ``export-triton`` writes (the classes, temperature,
review policy and domain guard of the exported model), and ``metadata=`` (a
sidecar JSON or a :class:`ModelMetadata`) may name what the client expects
(it must agree) or stand in for a server model without that parameter. A model
whose config disagrees with its metadata (input name, dtype or shape; output
names or shapes; the labels the server serves) is refused when loading.

Several requests are kept in flight (``max_in_flight``) so that the server's
dynamic batcher can combine them; results come back in order. Each request
has a timeout; a request that times out or finds the server unavailable is
sent again (``retries`` times, with a growing pause), and its rows replace
nothing but its own slot, so no cell is lost or counted twice. When a
request still fails, the run stops with the reason instead of returning
partial results.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ..errors import MetadataError, ModelMismatchError, WbcEdgeError, require
from ..metadata import ModelMetadata
from . import is_model_url
from .base import BatchJob, Outputs, Runner, split_outputs

INSTALL = "pip install 'wbc-edge[triton]'  (tritonclient[grpc,http])"
SCHEMES = ("grpc", "http", "https")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000, "https": 443}
#: The model config parameter with the wbc-edge metadata JSON (wbc_edge.export.triton_repository).
METADATA_PARAMETER = "wbc_edge_metadata"
#: Status codes worth another try: the server is (for now) unreachable, busy or slow.
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "502", "503", "504")
_TRANSIENT_TEXT = ("deadline exceeded", "timed out", "timeout", "failed to connect", "connection refused",
                   "connection reset", "connection closed", "socket closed", "unavailable")


class TritonError(WbcEdgeError):
    """The Triton server or model cannot be used, and why."""


__all__ = ["ModelURL", "TritonError", "TritonRunner", "is_model_url", "parse_model_url"]


@dataclass(frozen=True)
class ModelURL:
    scheme: str
    host: str
    port: int
    model: str
    version: str = ""

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}/{self.model}" + (f"/{self.version}" if self.version else "")


def parse_model_url(url: str) -> ModelURL:
    """``grpc://host[:port]/name[/version]`` (or http, https) as its parts; WbcEdgeError if malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise WbcEdgeError(f"{url}: not a model URL ({error})") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES or not parts.hostname:
        raise WbcEdgeError(f"{url}: a Triton model URL is grpc://HOST:PORT/MODEL or http://HOST:PORT/MODEL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise WbcEdgeError(f"{url}: a Triton model URL has no query, fragment or user part")
    segments = [s for s in parts.path.split("/") if s]
    if segments[:2] == ["v2", "models"]:  # the KServe path, as in Triton's own URLs
        segments = segments[2:]
        if len(segments) == 3 and segments[1] == "versions":
            segments = [segments[0], segments[2]]
    if len(segments) not in (1, 2) or (len(segments) == 2 and not segments[1].isdigit()):
        raise WbcEdgeError(f"{url}: name the model after the server: {scheme}://{parts.netloc}/MODEL[/VERSION]")
    return ModelURL(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], segments[0],
                    segments[1] if len(segments) == 2 else "")


class TritonRunner(Runner):
    """Runs a model served by Triton Inference Server (see the module docstring).

    Args:
        url: ``grpc://host:8001/name`` or ``http://host:8000/name`` (``/version`` optional).
        metadata: what the client expects (a metadata JSON path or a ModelMetadata); it
            must agree with the server's, or stands in where the server's config has none.
        timeout: seconds for one request (and for connecting).
        retries: further tries of a request that timed out or found the server unavailable.
        max_in_flight: requests sent before the first answer is awaited.
        check_labels: ask the server for its labels (the classification extension) and compare.
    """

    name = "triton"

    def __init__(self, url: str, *, metadata: str | Path | ModelMetadata | None = None, timeout: float = 30.0,
                 retries: int = 2, max_in_flight: int = 4, check_labels: bool = True):
        if not timeout > 0 or retries < 0 or max_in_flight < 1:
            raise WbcEdgeError(f"timeout must be > 0, retries >= 0 and max_in_flight >= 1; got {timeout}, "
                               f"{retries}, {max_in_flight}")
        self.url = parse_model_url(url)
        self.protocol = "grpc" if self.url.scheme == "grpc" else "http"
        self._module = require(f"tritonclient.{self.protocol}", "the Triton client", INSTALL)
        from tritonclient.utils import InferenceServerException

        self._server_error = InferenceServerException
        self.timeout, self.retries, self.max_in_flight = float(timeout), int(retries), int(max_in_flight)
        self._local = threading.local()
        self._clients: list = []
        self._clients_lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        config = self._connect()
        super().__init__(self._metadata_from(config, metadata))
        self._check_config(config)
        self.max_batch_size = int(config.get("max_batch_size", 0))
        if check_labels and self._label_file:
            self._check_labels()

    # ------------------------------------------------------------- loading

    def _client(self):
        """This thread's client (the HTTP client is not shared between threads; gRPC's is)."""
        client = getattr(self._local, "client", None)
        if client is None and self.protocol == "grpc" and self._clients:
            client = self._clients[0]
        if client is None:
            if self.protocol == "grpc":
                client = self._module.InferenceServerClient(url=self.url.address)
            else:
                client = self._module.InferenceServerClient(
                    url=self.url.address, ssl=self.url.scheme == "https", connection_timeout=self.timeout,
                    network_timeout=self.timeout)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _call(self, what: str, function, *args, **kwargs):
        """A control call (health, config) with the server's errors turned into TritonError."""
        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout)
        try:
            return function(*args, **kwargs)
        except self._server_error as error:
            if _transient(error):
                raise TritonError(f"{self.url}: cannot reach the Triton server at {self.url.address} ({_text(error)}); "
                                  "is it running, and is that its "
                                  f"{'gRPC' if self.protocol == 'grpc' else 'HTTP'} port?") from None
            raise TritonError(f"{self.url}: {what} failed: {_text(error)}") from None
        except (OSError, TimeoutError) as error:  # the HTTP client's sockets
            raise TritonError(f"{self.url}: cannot reach the Triton server at {self.url.address} ({error}); "
                              "is it running, and is that its HTTP port?") from None

    def _connect(self) -> dict:
        client = self._client()
        live = self._call("the liveness check", client.is_server_live)
        if not live:
            raise TritonError(f"{self.url}: the Triton server at {self.url.address} answers but is not live")
        name, version = self.url.model, self.url.version
        if not self._call("the readiness check", client.is_model_ready, name, version):
            raise TritonError(self._not_ready_reason())
        if self.protocol == "grpc":
            config = self._call("reading the model config", client.get_model_config, name, version,
                                as_json=True).get("config", {})
        else:
            config = self._call("reading the model config", client.get_model_config, name, version)
        return config

    def _not_ready_reason(self) -> str:
        client = self._client()
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        try:
            index = self._call("listing the models", client.get_model_repository_index, **kwargs)
        except TritonError:
            index = None
        if isinstance(index, dict):
            index = index.get("models", [])
        entries = [e for e in (index or []) if e.get("name") == self.url.model
                   and (not self.url.version or str(e.get("version", "")) == self.url.version)]
        served = sorted({e.get("name", "?") for e in (index or [])})
        if not entries:
            return (f"{self.url}: the Triton server has no model '{self.url.model}'"
                    + (f" version {self.url.version}" if self.url.version else "")
                    + f" (it serves: {', '.join(served) or 'none'})")
        entry = entries[0]
        return (f"{self.url}: model '{self.url.model}' is not ready on the server (state "
                f"{entry.get('state', 'unknown')}{': ' + entry['reason'] if entry.get('reason') else ''})")

    def _metadata_from(self, config: dict, expected) -> ModelMetadata:
        if isinstance(expected, (str, Path)):
            expected = ModelMetadata.load(expected)
        text = (config.get("parameters", {}).get(METADATA_PARAMETER) or {}).get("string_value")
        if not text:
            if expected is None:
                raise MetadataError(
                    f"{self.url}: the model's config has no '{METADATA_PARAMETER}' parameter (the classes, input "
                    "size and temperature wbc-edge needs): serve a repository made by 'wbc-edge export-triton', or "
                    "pass the model's metadata JSON (runner_options={'metadata': 'model.json'})")
            return expected
        try:
            served = ModelMetadata.from_dict(json.loads(text))
        except (ValueError, RecursionError, MetadataError) as error:
            raise MetadataError(f"{self.url}: the served '{METADATA_PARAMETER}' is unreadable ({error})") from None
        if expected is not None:
            served.check_compatible(expected, what=f"{self.url} vs the expected metadata")
            for name in ("temperature", "domain_guard", "cam"):
                if getattr(served, name) != getattr(expected, name):
                    raise MetadataError(f"{self.url} vs the expected metadata: {name} mismatch: "
                                        f"{getattr(served, name)!r} vs {getattr(expected, name)!r}")
        return served

    def _check_config(self, config: dict) -> None:
        meta, where = self.metadata, f"{self.url}"
        if int(config.get("max_batch_size", 0)) < 1:
            raise ModelMismatchError(f"{where}: the model does not batch (max_batch_size 0); wbc-edge sends "
                                     "[n, H, W, 3] batches: export the repository with 'wbc-edge export-triton'")
        inputs = config.get("input", [])
        height, width = meta.input_size
        if len(inputs) != 1:
            raise ModelMismatchError(f"{where}: expected one input, the model has {[i.get('name') for i in inputs]}")
        dims = [int(d) for d in inputs[0].get("dims", [])]
        if inputs[0].get("data_type") != "TYPE_UINT8" or dims != [height, width, 3]:
            raise ModelMismatchError(f"{where}: input '{inputs[0].get('name')}' is {inputs[0].get('data_type')} "
                                     f"{dims}; the model's metadata says TYPE_UINT8 [{height}, {width}, 3]")
        self.input_name = inputs[0]["name"]
        served = {o.get("name"): o for o in config.get("output", [])}
        self._label_file = False
        for name, columns in meta.output_columns.items():
            output = served.get(name)
            if output is None:
                raise ModelMismatchError(f"{where}: the model has no output '{name}' (it has {sorted(served)}); "
                                         f"its metadata names {', '.join(meta.output_columns)}")
            dims = [int(d) for d in output.get("dims", [])]
            width_ = columns.stop - columns.start
            allowed = [[width_]] + ([list(meta.cam_shape)] if name == "cam" else [])
            if output.get("data_type") != "TYPE_FP32" or dims not in allowed:
                raise ModelMismatchError(f"{where}: output '{name}' is {output.get('data_type')} {dims}; the "
                                         f"metadata says TYPE_FP32 {allowed[-1]}")
            if name == "logits":
                self._label_file = bool(output.get("label_filename"))
        self.output_names = list(meta.output_columns)

    def _check_labels(self) -> None:
        """The labels the server gives for the logits (its label_filename) are the metadata's classes."""
        height, width = self.metadata.input_size
        count = self.metadata.num_classes
        module, client = self._module, self._client()
        tensor = module.InferInput(self.input_name, [1, height, width, 3], "UINT8")
        tensor.set_data_from_numpy(np.zeros((1, height, width, 3), np.uint8))
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        result = self._call("asking for the labels", client.infer, self.url.model, [tensor],
                            model_version=self.url.version,
                            outputs=[module.InferRequestedOutput("logits", class_count=count)], **kwargs)
        labels = {}
        for item in np.asarray(result.as_numpy("logits")).reshape(-1):
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
            parts = text.split(":", 2)
            if len(parts) == 3 and parts[1].isdigit():
                labels[int(parts[1])] = parts[2]
        served = [labels.get(i) for i in range(count)]
        if served != self.metadata.classes:
            raise MetadataError(f"{self.url}: the server's labels for 'logits' ({served}) are not the metadata's "
                                f"classes ({self.metadata.classes}); the repository's labels.txt and its "
                                f"'{METADATA_PARAMETER}' disagree")

    # ---------------------------------------------------------- inference

    def _infer(self, images: np.ndarray) -> np.ndarray:
        return self._with_retries(images, None)

    def run_batches(self, jobs: Iterable[BatchJob]) -> Iterator[tuple[BatchJob, Outputs | None]]:
        """Keeps up to ``max_in_flight`` requests on the server while later jobs
        are filled; yields each job as soon as it and every job before it are
        answered, in job order."""
        pending: deque[tuple[BatchJob, list | None]] = deque()
        in_flight = 0
        limit = self.max_batch_size or None

        def ready() -> bool:
            return pending[0][1] is None or all(f.done() for f, _ in pending[0][1])

        for job in jobs:
            images = job.fill(None) if job.count else None
            if images is None or not len(images):
                pending.append((job, None))
            else:
                self.check_batch(images)
                step = limit or len(images)
                parts = [images[i:i + step] for i in range(0, len(images), step)]
                pending.append((job, [(self._submit(part), part) for part in parts]))
                in_flight += len(parts)
            while pending and (in_flight > self.max_in_flight or ready()):
                done, in_flight = self._collect(pending.popleft(), in_flight)
                yield done
        while pending:
            done, in_flight = self._collect(pending.popleft(), in_flight)
            yield done

    def _collect(self, entry, in_flight: int):
        job, requests = entry
        if requests is None:
            return (job, None), in_flight
        rows = np.concatenate([self._with_retries(part, future) for future, part in requests])
        return (job, split_outputs(self.metadata, rows)), in_flight - len(requests)

    def _submit(self, images: np.ndarray) -> concurrent.futures.Future:
        """Sends one request and returns the future of its raw rows."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.protocol == "grpc":
            def answered(result, error):
                if error is not None:
                    future.set_exception(error)
                else:
                    try:
                        future.set_result(self._rows(result, len(images)))
                    except BaseException as problem:  # a wrong answer is the caller's error
                        future.set_exception(problem)

            try:
                self._client().async_infer(self.url.model, self._inputs(images), answered,
                                           model_version=self.url.version, outputs=self._outputs(),
                                           client_timeout=self.timeout)
            except Exception as error:
                future.set_exception(error)
            return future
        if self._pool is None:
            with self._clients_lock:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(self.max_in_flight,
                                                                       thread_name_prefix="wbc-edge-triton")
        return self._pool.submit(self._request, images)

    def _request(self, images: np.ndarray) -> np.ndarray:
        """One blocking request (this thread's client)."""
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        result = self._client().infer(self.url.model, self._inputs(images), model_version=self.url.version,
                                      outputs=self._outputs(), **kwargs)
        return self._rows(result, len(images))

    def _with_retries(self, images: np.ndarray, future: concurrent.futures.Future | None) -> np.ndarray:
        """The request's rows: the future's, else (or after a transient failure)
        a new request, up to ``retries`` more times."""
        attempt = 0
        while True:
            try:
                if future is not None:
                    return future.result(timeout=self.timeout * 2 + 5)
                return self._request(images)
            except ModelMismatchError:
                raise
            except (concurrent.futures.TimeoutError, *_socket_errors()) as error:
                problem = error or TimeoutError("no answer")
            except self._server_error as error:
                if not _transient(error):
                    raise TritonError(f"{self.url}: the server refused a batch of {len(images)}: "
                                      f"{_text(error)}") from None
                problem = error
            if attempt >= self.retries:
                raise TritonError(f"{self.url}: a batch of {len(images)} images got no answer after "
                                  f"{attempt + 1} tries ({_text(problem)}); the run stops here rather than "
                                  "lose those cells") from None
            time.sleep(min(2.0, 0.1 * 2 ** attempt))
            attempt, future = attempt + 1, None

    def _inputs(self, images: np.ndarray) -> list:
        tensor = self._module.InferInput(self.input_name, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(images))
        return [tensor]

    def _outputs(self) -> list:
        return [self._module.InferRequestedOutput(name) for name in self.output_names]

    def _rows(self, result, count: int) -> np.ndarray:
        parts = []
        for name, columns in self.metadata.output_columns.items():
            values = result.as_numpy(name)
            width = columns.stop - columns.start
            if values is None or values.size != count * width:
                shape = None if values is None else list(values.shape)
                raise ModelMismatchError(f"{self.url}: output '{name}' came back as {shape} for {count} images; "
                                         f"expected [{count}, {width}] values")
            parts.append(values.reshape(count, width))
        return np.concatenate(parts, axis=1).astype(np.float32, copy=False)

    # ------------------------------------------------------------- lifetime

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # closing a client whose server went away
                pass

    def describe(self) -> dict:
        return {**super().describe(), "url": str(self.url), "protocol": self.protocol,
                "max_batch_size": self.max_batch_size, "max_in_flight": self.max_in_flight}


def _transient(error) -> bool:
    status = str(getattr(error, "status", lambda: "")() or "")
    text = _text(error).lower()
    return any(code in status for code in _TRANSIENT) or any(word in text for word in _TRANSIENT_TEXT)


def _socket_errors() -> tuple:
    return (OSError, TimeoutError)


def _text(error) -> str:
    message = getattr(error, "message", None)
    text = message() if callable(message) else str(error)
    return " ".join(str(text).split())[:300]
