"""The Triton backend against a real Triton server on 127.0.0.1.

One tritonserver (PyTriton's embedded binary, see tests/triton_support.py)
serves, for the whole session, repositories made by ``export-triton``: the
shipped model, and a small model with a domain guard and activation maps in
variants with wrong labels, a wrong shape, no metadata, or a slow first batch.
Predictions through it (gRPC and HTTP) must equal a local run on the same
cell images, report included; the errors must say what is wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.triton_support import (
    free_port,
    require_module,
    require_pytriton,
    served_repository,
    start_server,
    tiny_model,
)
from wbc_edge import Classifier
from wbc_edge.cli import main
from wbc_edge.errors import MetadataError, ModelMismatchError
from wbc_edge.export.triton_repository import export_triton
from wbc_edge.metadata import ModelMetadata
from wbc_edge.models import shipped_models

pytestmark = pytest.mark.triton


@pytest.fixture(scope="session")
def triton(tmp_path_factory):
    require_pytriton()
    require_module("tritonclient.grpc", "pip install 'wbc-edge[triton]'")
    require_module("tritonclient.http", "pip install 'wbc-edge[triton]'")
    if "int8-cpu" not in shipped_models():
        pytest.fail("the shipped int8-cpu model is missing from this checkout")
    work = tmp_path_factory.mktemp("triton")
    export_triton(work / "shipped", max_batch_size=16)
    tiny = tiny_model(work / "tiny-model")
    export_triton(work / "tiny", tiny, name="tiny", max_batch_size=8)
    served = work / "served"
    served_repository(work / "shipped", served, "wbc_resnet18")
    served_repository(work / "tiny", served, "tiny")
    served_repository(work / "tiny", served, "tiny", "tiny_mislabelled")
    labels = served / "tiny_mislabelled" / "labels.txt"
    labels.write_text("".join(reversed(labels.read_text().splitlines(keepends=True))))
    served_repository(work / "tiny", served, "tiny", "tiny_wrong_shape",
                      edit=lambda text: text.replace(r'input_size\":[16,16]', r'input_size\":[32,32]'))
    served_repository(work / "tiny", served, "tiny", "tiny_no_metadata",
                      edit=lambda text: re.sub(r'parameters \{\n  key: "wbc_edge_metadata".*?\n\}\n', "", text,
                                               flags=re.S))
    for name, instances in (("tiny_slow_retry", 2), ("tiny_slow_fail", 1)):  # the retry finds a free instance
        served_repository(work / "tiny", served, "tiny", name, test_delay_s="3",
                          test_delay_marker=str(work / f"{name}.delayed"),
                          edit=lambda text, n=instances: text.replace("{ count: 1 kind: KIND_AUTO }",
                                                                      f"{{ count: {n} kind: KIND_AUTO }}"))
    # a first batch that stalls the one instance while the next requests arrive: they queue, and are batched
    served_repository(work / "tiny", served, "tiny", "tiny_batching", test_delay_s="0.5",
                      test_delay_marker=str(work / "batching.delayed"), test_batch_log=str(work / "batches.log"))
    server = start_server(served, work / "server")
    server.batches = work / "batches.log"
    server.tiny = tiny
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_predictions(sample_paths):
    # the server runs onnxruntime on the INT8-CPU model, the export's default on every exporting CPU
    with Classifier.load(batch_size=16, backend="onnxruntime", precision="int8") as local:
        return local.predict_batch(sample_paths)


def assert_same_predictions(remote, local):
    assert len(remote) == len(local)
    for r, lo in zip(remote, local):
        assert (r.path, r.label, r.review, r.review_reason, r.error) == (lo.path, lo.label, lo.review,
                                                                        lo.review_reason, lo.error)
        assert r.confidence == pytest.approx(lo.confidence, abs=1e-5)
        assert r.probabilities == pytest.approx(lo.probabilities, abs=1e-5)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_predictions_through_triton_equal_the_local_run(triton, sample_paths, local_predictions, protocol):
    url = f"{triton.grpc_url if protocol == 'grpc' else triton.http_url}/wbc_resnet18"
    with Classifier.load(url, batch_size=8) as remote:
        shipped = ModelMetadata.load(shipped_models()["int8-cpu"].metadata_path)  # exported by default
        assert remote.backend == "triton" and remote.metadata == shipped  # labels, temperature, guard: the server's
        described = remote.describe()
        assert described["runner"]["url"] == url and described["runner"]["max_batch_size"] == 16
        assert_same_predictions(remote.predict_batch(sample_paths), local_predictions)
        streamed = list(remote.predict_stream(iter(sample_paths[:20]), batch_size=3))
        assert_same_predictions(streamed, local_predictions[:20])


def test_classify_through_triton_writes_the_same_report(triton, sample_dir, tmp_path, capsys):
    assert main(["classify", str(sample_dir), "--backend", "onnxruntime", "--precision", "int8",
                 "--out", str(tmp_path / "local.json"), "--no-progress"]) == 0
    url = f"{triton.grpc_url}/wbc_resnet18"
    assert main(["classify", str(sample_dir), "--model", url, "--out", str(tmp_path / "triton.json"),
                 "--no-progress"]) == 0
    local, remote = (json.loads((tmp_path / name).read_text()) for name in ("local.json", "triton.json"))
    assert remote["model"]["backend"] == "triton" and local["model"]["backend"] == "onnxruntime"
    assert remote["differential"] == local["differential"]
    assert remote["review_policy"] == local["review_policy"]
    assert len(remote["images"]) == len(local["images"]) > 100
    for r, lo in zip(remote["images"], local["images"]):
        assert {k: v for k, v in r.items() if k not in ("confidence", "probabilities")} == \
            {k: v for k, v in lo.items() if k not in ("confidence", "probabilities")}
        assert r["confidence"] == pytest.approx(lo["confidence"], abs=1e-5)


def test_requests_in_flight_are_batched_by_the_server(triton):
    images = list(np.random.default_rng(4).integers(0, 256, (24, 16, 16, 3), dtype=np.uint8))
    with Classifier.load(str(triton.tiny), backend="onnxruntime") as local:
        expected = local.predict_batch(images)
    with Classifier.load(f"{triton.grpc_url}/tiny_batching", batch_size=4) as remote:
        before = len(triton.batches.read_text().splitlines())
        assert_same_predictions(remote.predict_batch(images), expected)
    executions = [json.loads(line) for line in triton.batches.read_text().splitlines()[before:]]
    assert sum(map(sum, executions)) == 24  # every cell once
    assert all(size == 4 for sizes in executions for size in sizes)  # the client's requests, whole
    assert max(map(len, executions)) > 1  # requests in flight together ran as one batch


def test_guard_and_maps_come_back_as_locally(triton):
    images = np.random.default_rng(3).integers(0, 256, (11, 24, 20, 3), dtype=np.uint8)
    images[4] = 250  # a bright one, far from the others
    with Classifier.load(str(triton.tiny), backend="onnxruntime") as local, Classifier.load(f"{triton.http_url}/tiny") as remote:
        assert remote.metadata.cam_shape == (3, 2, 2) and remote.metadata.domain_guard is not None
        expected, got = local.predict_batch(list(images), cam=True), remote.predict_batch(list(images), cam=True)
    assert_same_predictions(got, expected)
    assert [p.out_of_distribution for p in got] == [p.out_of_distribution for p in expected]
    assert len({p.out_of_distribution for p in got}) == 2  # both verdicts occur
    for r, lo in zip(got, expected):
        assert r.ood_score == pytest.approx(lo.ood_score, abs=1e-4)
        np.testing.assert_allclose(r.cam, lo.cam, atol=1e-5)


def test_an_unreachable_server_is_a_clear_error(capsys):
    url = f"grpc://127.0.0.1:{free_port()}/wbc_resnet18"
    with pytest.raises(Exception, match="cannot reach the Triton server at 127.0.0.1:.*is it running"):
        Classifier.load(url)
    with pytest.raises(Exception, match="cannot reach the Triton server"):
        Classifier.load(f"http://127.0.0.1:{free_port()}/wbc_resnet18")
    assert main(["classify", "examples", "--model", url]) == 2
    assert "cannot reach the Triton server" in capsys.readouterr().err


def test_an_unknown_model_names_what_the_server_serves(triton):
    with pytest.raises(Exception, match=r"has no model 'nope' \(it serves: .*wbc_resnet18"):
        Classifier.load(f"{triton.grpc_url}/nope")
    with pytest.raises(Exception, match="has no model 'tiny' version 7"):
        Classifier.load(f"{triton.http_url}/tiny/7")


def test_a_model_whose_metadata_does_not_match_is_refused(triton):
    with pytest.raises(MetadataError, match="labels .* are not the metadata's classes"):
        Classifier.load(f"{triton.grpc_url}/tiny_mislabelled")
    with pytest.raises(ModelMismatchError, match=r"input 'pixels' is TYPE_UINT8 \[16, 16, 3\].*\[32, 32, 3\]"):
        Classifier.load(f"{triton.grpc_url}/tiny_wrong_shape")
    with pytest.raises(MetadataError, match="has no 'wbc_edge_metadata' parameter"):
        Classifier.load(f"{triton.grpc_url}/tiny_no_metadata")
    # the client's own sidecar stands in for a server config without it, and must agree where both exist
    sidecar = triton.tiny.with_suffix(".json")
    with Classifier.load(f"{triton.grpc_url}/tiny_no_metadata", runner_options={"metadata": sidecar}) as clf:
        assert clf.classes == ["blast", "band", "smudge"]
    shipped = shipped_models()["int8-cpu"].metadata_path
    with pytest.raises(MetadataError, match="classes mismatch"):
        Classifier.load(f"{triton.grpc_url}/tiny", runner_options={"metadata": shipped})


def test_a_timed_out_request_is_retried_without_losing_or_repeating_a_cell(triton):
    images = list(np.random.default_rng(5).integers(0, 256, (24, 16, 16, 3), dtype=np.uint8))
    with Classifier.load(str(triton.tiny), backend="onnxruntime") as local:
        expected = local.predict_batch(images)
    options = {"timeout": 1.0, "retries": 2}
    with Classifier.load(f"{triton.grpc_url}/tiny_slow_retry", batch_size=4, runner_options=options) as remote:
        got = remote.predict_batch(images)
    assert Path(str(triton.tiny.parent.parent / "tiny_slow_retry.delayed")).exists()  # the server did stall
    assert_same_predictions(got, expected)
    with Classifier.load(f"{triton.grpc_url}/tiny_slow_fail", batch_size=4,
                         runner_options={"timeout": 1.0, "retries": 0}) as remote, \
            pytest.raises(Exception, match=r"batch of 4 images got no answer after 1 tries.*rather than lose"):
        remote.predict_batch(images)
