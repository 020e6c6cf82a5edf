"""Finding the shipped model variants, and loading errors that say what to do.

The lookups run against a temporary models folder holding real model files
(links to the shipped FP32 ONNX) with real metadata, so every combination of
shipped variants can be checked whatever this install ships."""

from __future__ import annotations

import json

import pytest

import wbc_edge.models as models
from wbc_edge import Classifier, MissingDependencyError, WbcEdgeError
from wbc_edge.backends import library_available
from wbc_edge.errors import MetadataError, ModelMismatchError

SHIPPED = models.shipped_models()
needs_model = pytest.mark.skipif(not SHIPPED, reason="this install ships no default model")


def fake_models(tmp_path, monkeypatch, variants, precision_of=None):
    """A models folder with these variants: the shipped FP32 ONNX (linked)
    and its metadata with the variant's precision."""
    source = SHIPPED.get("fp32") or next(iter(SHIPPED.values()))
    meta = json.loads(source.metadata_path.read_text())
    for variant in variants:
        (tmp_path / f"default.{variant}.onnx").symlink_to(source.path)
        meta["precision"] = (precision_of or {}).get(variant, models._PRECISION[variant])
        (tmp_path / f"default.{variant}.json").write_text(json.dumps(meta))
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    return tmp_path


@needs_model
def test_only_fp32_shipped(tmp_path, monkeypatch):
    folder = fake_models(tmp_path, monkeypatch, ["fp32"])
    assert list(models.shipped_models()) == ["fp32"]
    assert models.default_precision("onnxruntime") == "fp32"
    assert models.resolve_model() == folder / "default.fp32.onnx"
    with pytest.raises(WbcEdgeError, match="int8-cpu.*not shipped") as error:
        models.resolve_model(precision="int8")
    assert "wbc-edge calibrate" in str(error.value) and "--target cpu" in str(error.value)
    with pytest.raises(WbcEdgeError, match="--precision fp16"):
        models.resolve_model(precision="fp16")


def with_cpu(monkeypatch, flags: list[str], machine: str = "x86_64") -> None:
    from wbc_edge.backends import probe

    monkeypatch.setattr(probe, "cpu_flags", lambda: flags)
    monkeypatch.setattr(probe.platform, "machine", lambda: machine)


@needs_model
def test_int8_cpu_is_the_cpu_default_when_shipped(tmp_path, monkeypatch):
    folder = fake_models(tmp_path, monkeypatch, ["fp32", "fp16", "int8-cpu", "int8-tensorrt"])
    with_cpu(monkeypatch, ["avx2", "avx512f", "avx512_vnni"])
    assert models.default_precision("onnxruntime") == "int8"
    assert models.resolve_model() == folder / "default.int8-cpu.onnx"
    assert models.resolve_model(precision="int8", backend="onnxruntime") == folder / "default.int8-cpu.onnx"
    assert models.resolve_model(precision="fp16") == folder / "default.fp16.onnx"
    assert models.resolve_model(precision="fp32") == folder / "default.fp32.onnx"


@needs_model
def test_tensorrt_asks_for_an_engine_built_from_the_variant(tmp_path, monkeypatch):
    folder = fake_models(tmp_path, monkeypatch, ["fp32", "int8-tensorrt"])
    with pytest.raises(WbcEdgeError, match="wbc-edge build-engine") as error:
        models.resolve_model(precision="int8", backend="tensorrt")
    assert str(folder / "default.int8-tensorrt.onnx") in str(error.value)
    with pytest.raises(WbcEdgeError, match="build-engine"):
        models.resolve_model(backend="tensorrt")  # default on TensorRT: int8


def test_no_model_shipped(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    with pytest.raises(WbcEdgeError, match="no default model is shipped"):
        models.resolve_model()


def test_explicit_model_checks(tmp_path):
    with pytest.raises(WbcEdgeError, match="not found"):
        models.resolve_model(tmp_path / "nope.onnx")
    with pytest.raises(WbcEdgeError, match="directory"):
        models.resolve_model(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(WbcEdgeError, match="either a model or a precision"):
        models.resolve_model(tmp_path / "m.onnx", precision="int8")


@needs_model
def test_torch_backend_runs_the_shipped_fp32_onnx():
    # PyTorch rebuilds the network from the FP32 graph (tests/test_from_onnx.py checks the answers)
    assert models.resolve_model(backend="torch") == models.variant_path("fp32")


@needs_model
def test_shipped_variant_whose_metadata_contradicts_its_name_is_refused(tmp_path, monkeypatch):
    fake_models(tmp_path, monkeypatch, ["fp32", "int8-cpu"], precision_of={"int8-cpu": "fp32"})
    with pytest.raises(ModelMismatchError, match="int8-cpu.*precision fp32"):
        Classifier.load(precision="int8")


@needs_model
def test_model_whose_metadata_names_other_classes_is_refused(tmp_path):
    source = SHIPPED.get("fp32") or next(iter(SHIPPED.values()))
    meta = json.loads(source.metadata_path.read_text())
    meta["classes"] = meta["classes"][:-1]  # one class fewer than the model outputs
    (tmp_path / "model.onnx").symlink_to(source.path)
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises((ModelMismatchError, MetadataError), match="classes"):
        Classifier.load(tmp_path / "model.onnx")


@pytest.mark.skipif(library_available("tensorrt"),
                    reason="a TensorRT runtime (tensorrt or tensorrt_lean) is installed here, so it is not missing")
def test_explicit_backend_not_installed_says_how_to_install():
    with pytest.raises(MissingDependencyError, match="pip install"):
        Classifier.load(backend="tensorrt")


@pytest.mark.skipif(not library_available("tensorrt"), reason="no TensorRT runtime (tensorrt or tensorrt_lean) here")
@needs_model
def test_tensorrt_with_an_onnx_file_points_to_build_engine():
    with pytest.raises(WbcEdgeError, match="wbc-edge build-engine"):
        Classifier.load(next(iter(SHIPPED.values())).path, backend="tensorrt")


def test_unknown_backend_and_precision():
    with pytest.raises(WbcEdgeError, match="unknown backend"):
        Classifier.load(backend="coreml")
    with pytest.raises(WbcEdgeError, match="unknown precision"):
        Classifier.load(precision="fp8")


def test_checkpoint_runs_on_torch(shipped_fp32_checkpoint):
    """auto picks torch for a checkpoint (here the shipped FP32 model's weights
    saved as one); int8 is refused there with where it runs."""
    checkpoint = shipped_fp32_checkpoint
    example = sorted((models.MODELS_DIR.parent.parent / "examples").glob("*.jpg"))[0]
    with Classifier.load(checkpoint, precision="fp32") as c, Classifier.load(SHIPPED["fp32"].path, backend="onnxruntime") as reference:
        assert (c.backend, c.precision) == ("torch", "fp32")
        got, want = c.predict(example), reference.predict(example)
        assert got.ok and got.label == want.label
        assert abs(got.confidence - want.confidence) < 1e-3  # two libraries' float32 kernels
    with pytest.raises(WbcEdgeError, match="int8"):
        Classifier.load(checkpoint, precision="int8")


def test_the_package_ships_the_default_model():
    """The checkout ships the FP32 and INT8-for-CPU forms of one model (and
    INT8-for-TensorRT when the release could: it must meet its parity targets
    and fit the budget): same classes, input size, normalization and
    temperature, each INT8 form made from the shipped FP32 file (its sha256)."""
    from wbc_edge.metadata import ModelMetadata, sha256_of

    assert {"fp32", "int8-cpu"} <= set(SHIPPED), f"shipped: {sorted(SHIPPED)}"
    fp32 = ModelMetadata.load(SHIPPED["fp32"].metadata_path)
    assert fp32.precision == "fp32" and fp32.input_size == (128, 128) and len(fp32.classes) == 8
    fp32_sha = sha256_of(SHIPPED["fp32"].path)
    for variant in sorted({"int8-cpu", "int8-tensorrt"} & set(SHIPPED)):
        meta = ModelMetadata.load(SHIPPED[variant].metadata_path)
        assert meta.precision == "int8"
        assert (meta.classes, meta.input_size, meta.mean, meta.std, meta.temperature) == \
            (fp32.classes, fp32.input_size, fp32.mean, fp32.std, fp32.temperature)
        assert meta.source_sha256 == fp32_sha, f"{variant} was not made from the shipped FP32 model"


@needs_model
@pytest.mark.parametrize(("flags", "machine", "default"), [
    (["avx2"], "x86_64", "fp32"),                            # AVX2 only: U8S8 saturates
    (["avx2", "avx512f"], "x86_64", "fp32"),                 # AVX-512 without VNNI: still VPMADDUBSW
    (["avx2", "avx_vnni"], "x86_64", "int8"),
    (["avx2", "avx512f", "amx_tile", "amx_int8"], "x86_64", "int8"),
    (["asimd"], "aarch64", "int8"),                          # no 16-bit step on Arm
])
def test_int8_cpu_is_the_default_only_where_the_cpu_runs_it_exactly(tmp_path, monkeypatch, flags, machine, default):
    folder = fake_models(tmp_path, monkeypatch, ["fp32", "int8-cpu"])
    with_cpu(monkeypatch, flags, machine)
    assert models.default_precision("onnxruntime") == default
    assert models.resolve_model() == folder / f"default.{default.replace('int8', 'int8-cpu')}.onnx"
    assert models.resolve_model(precision="int8") == folder / "default.int8-cpu.onnx"  # asked for: given


@needs_model
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_loading_int8_cpu_where_it_saturates_warns(monkeypatch, backend, recwarn):
    """Whichever way the INT8-CPU model is named (precision, file), loading it
    on a CPU without VNNI or AMX says its answers may differ, and why."""
    pytest.importorskip(backend)
    from wbc_edge import Classifier

    with_cpu(monkeypatch, ["avx2"])
    for load in (dict(precision="int8"), dict(model=models.shipped_models()["int8-cpu"].path)):
        with pytest.warns(UserWarning, match="no VNNI or AMX.*saturate.*--precision fp32"):
            Classifier.load(backend=backend, **load).close()
    recwarn.clear()
    with_cpu(monkeypatch, ["avx2", "avx512f", "avx512_vnni"])
    Classifier.load(backend=backend, precision="int8").close()
    Classifier.load(backend=backend, precision="fp32").close()
    assert not [w for w in recwarn if "VNNI" in str(w.message)]
