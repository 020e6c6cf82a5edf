"""wbc-edge export-triton: the repository parses with Triton's own ModelConfig
schema and agrees with the ONNX it holds (names, dtype, shape, labels), and is
written atomically without replacing what was not named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.triton_support import require_module, tiny_model
from wbc_edge.cli import main
from wbc_edge.errors import WbcEdgeError
from wbc_edge.export.triton_repository import METADATA_PARAMETER, export_triton
from wbc_edge.metadata import ModelMetadata, sha256_of
from wbc_edge.models import shipped_models

onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is needed")


def parse_config(path):
    """config.pbtxt through Triton's schema (tritonclient's model_config_pb2)."""
    text_format = require_module("google.protobuf.text_format")
    return text_format.Parse(path.read_text(), model_config_pb2().ModelConfig())


def model_config_pb2():
    """Triton's ModelConfig schema, from tritonclient (the triton extra); never skipped in CI."""
    return require_module("tritonclient.grpc.model_config_pb2", "pip install 'wbc-edge[triton]'")


def onnx_io(path):
    model = onnx.load(str(path))
    def dims(value):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
    return ([(i.name, i.type.tensor_type.elem_type, dims(i)) for i in model.graph.input],
            [(o.name, o.type.tensor_type.elem_type, dims(o)) for o in model.graph.output])


@pytest.fixture(scope="module")
def shipped_repo(tmp_path_factory):
    if "int8-cpu" not in shipped_models():
        pytest.skip("the shipped int8-cpu model is not in this checkout")
    return export_triton(tmp_path_factory.mktemp("triton") / "repo", max_batch_size=32, instances=2)


def test_shipped_repository_parses_with_tritons_schema_and_agrees_with_the_onnx(shipped_repo):
    shipped = shipped_models()
    meta = ModelMetadata.load(shipped["int8-cpu"].metadata_path)
    expected_outputs = [("logits", [meta.num_classes])]
    if meta.domain_guard is not None:
        expected_outputs.append(("ood_score", [1]))
    if meta.cam is not None:
        expected_outputs.append(("cam", list(meta.cam_shape)))
    repo = shipped_repo.out
    assert sorted(p.name for p in repo.iterdir()) == ["wbc-edge-triton.json", "wbc_resnet18", "wbc_resnet18_tensorrt"]
    trt_source = "int8-tensorrt" if "int8-tensorrt" in shipped else "fp32"  # TensorRT's INT8, else the reference
    for name, platform, kind, onnx_path, source in (
            ("wbc_resnet18", "onnxruntime_onnx", "KIND_AUTO", repo / "wbc_resnet18" / "1" / "model.onnx", "int8-cpu"),
            ("wbc_resnet18_tensorrt", "tensorrt_plan", "KIND_GPU", repo / "wbc_resnet18_tensorrt" / "model.onnx",
             trt_source)):
        config = parse_config(repo / name / "config.pbtxt")
        assert (config.name, config.platform, config.max_batch_size) == (name, platform, 32)
        (inputs, outputs) = onnx_io(onnx_path)
        assert len(config.input) == 1 and len(inputs) == 1
        assert config.input[0].name == inputs[0][0] == "input"
        assert inputs[0][1] == onnx.TensorProto.UINT8 and model_config_pb2().DataType.Name(config.input[0].data_type) == "TYPE_UINT8"
        assert list(config.input[0].dims) == inputs[0][2][1:] == [*meta.input_size, 3]
        assert config.input[0].format == config.input[0].FORMAT_NHWC
        assert [(o.name, list(o.dims)) for o in config.output] == [(o[0], o[2][1:]) for o in outputs] \
            == expected_outputs
        assert all(model_config_pb2().DataType.Name(o.data_type) == "TYPE_FP32" for o in config.output)
        assert all(o[1] == onnx.TensorProto.FLOAT for o in outputs)
        assert config.output[0].label_filename == "labels.txt"
        assert (repo / name / "labels.txt").read_text().splitlines() == meta.classes
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        assert [(g.count, config.instance_group[0].Kind.Name(g.kind)) for g in config.instance_group] == [(2, kind)]
        assert sorted(w.batch_size for w in config.model_warmup) == [1, 32]
        assert all(w.inputs["input"].zero_data and list(w.inputs["input"].dims) == [*meta.input_size, 3]
                   for w in config.model_warmup)
        served = ModelMetadata.from_dict(json.loads(config.parameters[METADATA_PARAMETER].string_value))
        assert served == ModelMetadata.load(shipped[source].metadata_path)
        if len(expected_outputs) == 1:  # a logits-only model whose output is already 'logits': the same bytes
            assert sha256_of(onnx_path) == sha256_of(shipped[source].path)
    script = (repo / "wbc_resnet18_tensorrt" / "build-engine.sh").read_text()
    assert ("wbc-edge build-engine --onnx model.onnx --out 1/model.plan --min-batch 1 --opt-batch 32 "
            "--max-batch 32 --profiles 1") in script
    assert shipped_repo.build_command.endswith("--max-batch 32 --profiles 1")
    manifest = json.loads((repo / "wbc-edge-triton.json").read_text())
    assert manifest["models"]["wbc_resnet18"]["source_sha256"] == sha256_of(shipped["int8-cpu"].path)
    assert manifest["classes"] == meta.classes


def test_guard_and_maps_become_named_outputs_that_reproduce_the_models_rows(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    source = tiny_model(tmp_path / "model")
    result = export_triton(tmp_path / "repo", source, name="tiny", max_batch_size=8)
    meta = result.metadata
    assert list(meta.output_columns) == ["logits", "ood_score", "cam"]
    config = parse_config(tmp_path / "repo" / "tiny" / "config.pbtxt")
    assert [(o.name, list(o.dims), o.label_filename) for o in config.output] == [
        ("logits", [3], "labels.txt"), ("ood_score", [1], ""), ("cam", [3, 2, 2], "")]
    assert config.input[0].name == "pixels" and list(config.input[0].dims) == [16, 16, 3]
    _, outputs = onnx_io(tmp_path / "repo" / "tiny" / "1" / "model.onnx")
    assert [(o[0], o[2][1:]) for o in outputs] == [("logits", [3]), ("ood_score", [1]), ("cam", [3, 2, 2])]
    images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    (rows,) = ort.InferenceSession(str(source)).run(None, {"pixels": images})
    parts = ort.InferenceSession(str(tmp_path / "repo" / "tiny" / "1" / "model.onnx")).run(
        ["logits", "ood_score", "cam"], {"pixels": images})
    np.testing.assert_array_equal(np.concatenate([p.reshape(5, -1) for p in parts], axis=1), rows)
    assert parts[2].shape == (5, 3, 2, 2)
    # the TensorRT model is built from the same named-output graph
    assert (tmp_path / "repo" / "tiny_tensorrt" / "model.onnx").read_bytes() == \
        (tmp_path / "repo" / "tiny" / "1" / "model.onnx").read_bytes()


def test_an_existing_repository_is_replaced_only_with_force(tmp_path, capsys):
    source = tiny_model(tmp_path / "model")
    out = tmp_path / "repo"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["export-triton", "--out", str(out), "--model", str(source), "--name", "tiny"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert main(["export-triton", "--out", str(out), "--model", str(source), "--name", "tiny", "--force"]) == 0
    printed = capsys.readouterr().out
    assert "grpc://HOST:8001/tiny" in printed and "wbc-edge build-engine --onnx" in printed
    assert sorted(p.name for p in out.iterdir()) == ["tiny", "tiny_tensorrt", "wbc-edge-triton.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "repo"]  # no temporary folder left


def test_a_cpu_quantized_file_gets_no_tensorrt_model(tmp_path):
    shipped = shipped_models()
    if "int8-cpu" not in shipped:
        pytest.skip("the shipped int8-cpu model is not in this checkout")
    result = export_triton(tmp_path / "repo", shipped["int8-cpu"].path)
    assert list(result.models) == ["wbc_resnet18"]
    assert "quantized for CPUs" in result.tensorrt_skipped and result.build_command is None


@pytest.mark.parametrize(("options", "message"), [
    ({"name": "../up"}, "a Triton model name"),
    ({"max_batch_size": 0}, "--max-batch-size must be"),
    ({"instances": 0}, "--instances must be"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, options, message):
    source = tiny_model(tmp_path / "model")
    with pytest.raises(WbcEdgeError, match=message):
        export_triton(tmp_path / "repo", source, **options)
    assert not (tmp_path / "repo").exists()
