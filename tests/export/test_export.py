"""wbc-edge export: PyTorch checkpoint -> verified FP32 ONNX, and the lossless
float16 weight storage of the shipped model.

Most tests use a small checkpoint made here: a ResNet-18 with seeded random
weights whose BatchNorm statistics are measured on the shipped training
sample images (so activations and logits have realistic, image-dependent
spread), at 64x64 to stay fast. Tests of the shipped model skip when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs PyTorch (pip install 'wbc-edge[export]')")
onnx = pytest.importorskip("onnx", reason="export needs onnx (pip install 'wbc-edge[export]')")

from tests.conftest import REPO, SAMPLE_DIR, sample_rows  # noqa: E402
from wbc_edge.cli import main  # noqa: E402
from wbc_edge.export import weight_storage  # noqa: E402
from wbc_edge.export.onnx_export import export_checkpoint  # noqa: E402
from wbc_edge.export.verify import ParityError, check_parity  # noqa: E402
from wbc_edge.metadata import ONNX_METADATA_KEY, ModelMetadata, sha256_of, sidecar_path  # noqa: E402

MODELS = REPO / "wbc_edge" / "models"
SHIPPED_FP32 = MODELS / "default.fp32.onnx"
CLASSES = sorted({r["label"] for r in sample_rows()})
FIXTURE_SIZE = (64, 64)
MEAN, STD = (0.8737, 0.7485, 0.7215), (0.1566, 0.1825, 0.0789)


def sample_batch(size=FIXTURE_SIZE, split: str | None = None,
                 policy: str = "stretch") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The shipped sample images (one split or all) through the inference
    preprocessing: uint8 [N, H, W, 3], integer labels, paths."""
    from wbc_edge.decode import decode_images
    from wbc_edge.preprocess import preprocess_batch

    rows = sample_rows(split)
    paths = [SAMPLE_DIR / r["path"] for r in rows]
    images = preprocess_batch(decode_images(paths), size, policy=policy)
    labels = np.array([CLASSES.index(r["label"]) for r in rows])
    return images, labels, [str(p) for p in paths]


def make_checkpoint(path: Path, size=FIXTURE_SIZE, seed: int = 0) -> Path:
    """A wbc-edge checkpoint of a seeded random ResNet-18 whose BatchNorm
    statistics come from the sample's training images."""
    from wbc_edge.training.checkpoint import save_checkpoint
    from wbc_edge.training.deployable import DeployableModel
    from wbc_edge.training.resnet import resnet18

    torch.manual_seed(seed)
    net = resnet18(num_classes=len(CLASSES))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.normal_(module.bias, 0.0, 0.1)
            module.momentum = None  # cumulative average over the batches below
    images, _, _ = sample_batch(size, "train")
    model = DeployableModel(net, MEAN, STD).train()
    with torch.no_grad():
        for start in range(0, len(images), 16):
            model(torch.from_numpy(images[start:start + 16]))
    meta = ModelMetadata(classes=CLASSES, input_size=size, mean=MEAN, std=STD, temperature=1.3,
                         format="checkpoint", extra={"architecture": "resnet18"})
    return save_checkpoint({"model": net.state_dict(), "meta": meta.to_dict()}, path)


def copy_verification_images(folder: Path) -> Path:
    """A few real cell images (the sample's validation ones, two per class) for
    the export's own verification."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for row in sample_rows("val"):
        shutil.copy(SAMPLE_DIR / row["path"], folder / Path(row["path"]).name)
    return folder


def export_fixture(folder: Path, weight_storage: str = "fp32") -> tuple[Path, Path]:
    """make_checkpoint, exported and verified: (checkpoint, ONNX model)."""
    checkpoint = make_checkpoint(folder / "model.pt")
    result = export_checkpoint(checkpoint, folder / f"model.{weight_storage}.onnx", weight_storage=weight_storage,
                               verify_images=copy_verification_images(folder / "verify"))
    return checkpoint, result.path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def verify_dir(tmp_path_factory) -> Path:
    return copy_verification_images(tmp_path_factory.mktemp("verify"))


def torch_reference(state: dict, meta: ModelMetadata):
    from wbc_edge.export.onnx_export import deployable_from_state

    return deployable_from_state({k: torch.as_tensor(v) for k, v in state.items()}, meta, cam=meta.cam is not None)


def ort_logits(path: Path, images: np.ndarray) -> np.ndarray:
    from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path) as runner:
        return runner.infer(images)


def assert_parity(expected: np.ndarray, got: np.ndarray) -> None:
    """The export rule: max |dlogit| <= 1e-4 x max |logit| and the same top-1 on every image."""
    assert np.abs(expected - got).max() <= 1e-4 * np.abs(expected).max()
    classes = slice(0, len(CLASSES))  # the class logits (activation maps may follow)
    np.testing.assert_array_equal(expected[:, classes].argmax(axis=1), got[:, classes].argmax(axis=1))


def test_export_cli_writes_a_verified_uint8_model_with_metadata(checkpoint, verify_dir, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out),
                 "--verify-images", str(verify_dir)]) == 0
    assert "verified" in capsys.readouterr().out

    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "input" and graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims == ["batch", *FIXTURE_SIZE, 3]
    (graph_output,) = model.graph.output
    assert graph_output.name == "logits" and graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    embedded = next(p.value for p in model.metadata_props if p.key == ONNX_METADATA_KEY)
    sidecar = ModelMetadata.load(sidecar_path(out))
    # one logit per class, then each class's activation map (classes x h x w: five halvings of the input)
    cam = [len(CLASSES), *[(s + 31) // 32 for s in FIXTURE_SIZE]]
    assert sidecar.cam == {"shape": cam, "layer": "layer4"}
    assert [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim] == [
        "batch", len(CLASSES) + int(np.prod(cam))]
    assert ModelMetadata.from_dict(json.loads(embedded)) == sidecar
    assert sidecar.classes == CLASSES and sidecar.input_size == FIXTURE_SIZE and sidecar.temperature == 1.3
    assert (sidecar.precision, sidecar.format) == ("fp32", "onnx")
    assert sidecar.source_sha256 == sha256_of(checkpoint)
    assert sidecar.extra["weight_storage"] == "fp32"

    # Against PyTorch on all 208 sample images (a batch, and one image alone).
    images, _, _ = sample_batch()
    from wbc_edge.training.checkpoint import extract_state_dict, load_checkpoint

    reference = torch_reference(extract_state_dict(load_checkpoint(checkpoint)), sidecar)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(images)).numpy()
    assert_parity(expected, ort_logits(out, images))
    assert_parity(expected[5:6], ort_logits(out, images[5:6]))
    assert len(set(expected[:, :len(CLASSES)].argmax(axis=1))) > 1  # the check compares something


def test_fp16_weight_storage_is_lossless(checkpoint, verify_dir, tmp_path):
    plain = export_checkpoint(checkpoint, tmp_path / "plain.onnx", verify_images=verify_dir)
    half = export_checkpoint(checkpoint, tmp_path / "half.onnx", weight_storage="fp16", verify_images=verify_dir)
    assert half.metadata.extra["weight_storage"] == "fp16"
    assert half.size_bytes < 0.52 * plain.size_bytes

    model = onnx.load(str(half.path))
    stored = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert len(stored) >= 90  # every conv, BatchNorm and fc weight of the ResNet-18
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 20  # unfolded

    # The stored weights are exactly the checkpoint's weights rounded to float16 values...
    from wbc_edge.training.checkpoint import extract_state_dict, load_checkpoint

    rounded, summary = weight_storage.round_state_dict_to_fp16(extract_state_dict(load_checkpoint(checkpoint)))
    assert 0 < summary["max_relative_change"] < 2 ** -10
    rebuilt = weight_storage.state_dict_from_onnx(model)
    assert set(rebuilt) == set(rounded)
    for name, values in rebuilt.items():
        if not name.endswith("num_batches_tracked"):  # not in the graph: filled with 0
            np.testing.assert_array_equal(values, rounded[name].numpy(), err_msg=name)

    # ...and a float32 graph holding the same values computes the same logits, bit for bit.
    weight_storage.materialize_fp32_weights(model)
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    materialized = tmp_path / "materialized.onnx"
    onnx.save(model, str(materialized))
    sidecar_path(materialized).write_text(sidecar_path(half.path).read_text())
    images, _, _ = sample_batch()
    np.testing.assert_array_equal(ort_logits(materialized, images), ort_logits(half.path, images))


def test_store_weights_as_fp16_converts_only_exact_tensors():
    from onnx import helper, numpy_helper

    exact = np.array([0.5, -1.25, 3.0, 1024.0] * 8, dtype=np.float32).reshape(4, 8)
    inexact = exact.copy()
    inexact[0, 0] = 0.1  # not a float16 value
    nodes = [helper.make_node("MatMul", ["x", "exact"], ["y"]), helper.make_node("MatMul", ["y", "inexact"], ["z"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(exact, "exact"), numpy_helper.from_array(inexact.reshape(8, 4), "inexact")])
    model = helper.make_model(graph)
    original = model.SerializeToString()

    assert weight_storage.store_weights_as_fp16(model) == ["exact"]
    onnx.checker.check_model(model, full_check=True)
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types == {"exact" + weight_storage.FP16_SUFFIX: onnx.TensorProto.FLOAT16,
                     "inexact": onnx.TensorProto.FLOAT}
    assert weight_storage.materialize_fp32_weights(model) == 1
    restored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(original).graph.initializer}
    assert restored.keys() == before.keys()
    for name in before:
        np.testing.assert_array_equal(restored[name], before[name])


def test_export_refuses_a_model_that_disagrees_with_pytorch(checkpoint, verify_dir, tmp_path, monkeypatch, capsys):
    """A graph that changes one class's bias (a wrong top-1 injected after the
    trace) must fail verification: non-zero exit, a clear message, no output."""
    real_store = weight_storage.store_weights_as_fp16

    def store_and_corrupt(model, *args, **kwargs):
        from onnx import numpy_helper

        stored = real_store(model, *args, **kwargs)
        bias = next(i for i in model.graph.initializer if i.name == "net.fc.bias")
        values = numpy_helper.to_array(bias).copy()
        values[3] += 100.0
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
        return stored

    monkeypatch.setattr(weight_storage, "store_weights_as_fp16", store_and_corrupt)
    out = tmp_path / "bad.onnx"
    code = main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--weight-storage", "fp16",
                 "--verify-images", str(verify_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "wbc-edge export: error:" in err and "top-1 differs on" in err and "not accepted" in err
    assert not out.exists() and not sidecar_path(out).exists()
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.json"))


def test_check_parity_rule():
    reference = np.array([[4.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    names = ["a.jpg", "b.jpg"]
    assert check_parity(reference, reference + 3e-4, names, "same").ok  # 3e-4 <= 1e-4 x 4
    with pytest.raises(ParityError, match="max \\|dlogit\\|"):
        check_parity(reference, reference + 5e-4, names, "too far")
    swapped = reference.copy()
    swapped[1] = [0.0, 1.0, 2.0]
    with pytest.raises(ParityError, match="top-1 differs on 1: b.jpg"):
        check_parity(reference, swapped, names, "top-1", relative_tolerance=1.0)
    with pytest.raises(ParityError, match="non-finite"):
        check_parity(reference, reference * np.nan, names, "nan")


def test_export_errors_name_the_input(checkpoint, tmp_path, verify_dir, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx"),
                 "--verify-images", str(verify_dir)]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no readable images"):
        export_checkpoint(checkpoint, tmp_path / "m.onnx", verify_images=empty)
    with pytest.raises(Exception, match="must end in .onnx"):
        export_checkpoint(checkpoint, tmp_path / "m.pt", verify_images=verify_dir)


@pytest.mark.skipif(not SHIPPED_FP32.is_file(), reason="the shipped FP32 model is absent: run the release "
                    "(python -m wbc_edge.calibration.release) to make wbc_edge/models/default.fp32.onnx")
def test_shipped_fp32_onnx_matches_pytorch_rebuilt_from_its_initializers():
    """No checkpoint ships: the PyTorch reference is rebuilt from the shipped
    ONNX's own initializers (BatchNorm is unfolded, names are the state_dict's)."""
    model = onnx.load(str(SHIPPED_FP32))
    meta = ModelMetadata.load(sidecar_path(SHIPPED_FP32))
    assert meta.extra.get("weight_storage") == "fp16"
    assert all(weight_storage.fp16_exact(v) for v in weight_storage.state_dict_from_onnx(model).values()
               if v.dtype == np.float32 and v.size >= 16)
    from wbc_edge.training.from_onnx import deployable_from_onnx

    reference, _ = deployable_from_onnx(SHIPPED_FP32, cam=meta.cam is not None)  # the network, guard and maps
    images, labels, _ = sample_batch(meta.input_size, policy=meta.resize_policy)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(images)).numpy()
    assert_parity(expected, ort_logits(SHIPPED_FP32, images))
    # A trained model: far better than chance on the real sample images.
    assert (expected[:, meta.output_columns["logits"]].argmax(axis=1) == labels).mean() > 0.6
