"""Engine metadata and where an engine may run, without TensorRT or a GPU.

The engine JSON files here are made the way 'wbc-edge build-engine' makes
them (export.build_engine.engine_metadata on the shipped ONNX model's real
metadata, saved and read back), then judged against the TensorRT versions and
GPUs an analyzer might have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from wbc_edge.backends.tensorrt import load_engine_metadata
from wbc_edge.backends.tensorrt_compat import (
    EngineRecord,
    RuntimeFacts,
    check_driver,
    check_engine,
    check_plan_digest,
    parse_compute_capability,
    parse_version,
    tensorrt_cuda_major,
)
from wbc_edge.errors import MetadataError, ModelMismatchError, WbcEdgeError
from wbc_edge.export.build_engine import engine_metadata, onnx_metadata
from wbc_edge.metadata import ModelMetadata

MODELS = Path(__file__).resolve().parents[2] / "wbc_edge" / "models"
ONNX = MODELS / "default.fp32.onnx"

needs_onnx = pytest.mark.skipif(not ONNX.is_file() or not ONNX.with_suffix(".json").is_file(),
                                reason="the shipped default.fp32.onnx (with its JSON) is not in this install")

L4 = RuntimeFacts("10.3.0.30", False, "NVIDIA L4", (8, 9))


def make_record(**changes) -> EngineRecord:
    base = EngineRecord(version="10.3.0.30", gpu_name="NVIDIA L4", compute_capability="8.9", min_batch=1,
                        opt_batch=64, max_batch=256)
    return dataclasses.replace(base, **changes)


@pytest.fixture()
def engine_files(tmp_path):
    """Writes ``cells.engine`` + ``cells.json`` as build-engine does, from the
    shipped model; returns a function taking EngineRecord changes."""
    if not ONNX.is_file():
        pytest.skip("the shipped default.fp32.onnx is not in this install")

    def write(plan: bytes = b"not a real plan", **changes) -> Path:
        engine = tmp_path / "cells.engine"
        engine.write_bytes(plan)
        record = make_record(engine_sha256=hashlib.sha256(plan).hexdigest(), **changes)
        engine_metadata(onnx_metadata(ONNX), ONNX, record).save(tmp_path / "cells.json")
        return engine

    return write


@needs_onnx
def test_engine_json_carries_the_onnx_metadata_over(engine_files):
    engine = engine_files(version_compatible=True)
    meta, record = load_engine_metadata(engine)
    source = ModelMetadata.load(ONNX.with_suffix(".json"))
    assert meta.format == "engine" and source.format == "onnx"
    for name in ("classes", "input_size", "mean", "std", "resize_policy", "temperature", "precision", "name",
                 "quantization", "extra"):
        assert getattr(meta, name) == getattr(source, name), name
    assert meta.source_sha256 == hashlib.sha256(ONNX.read_bytes()).hexdigest()
    assert record == EngineRecord.from_dict(json.loads(engine.with_suffix(".json").read_text())["tensorrt"])
    assert (record.version, record.gpu_name, record.compute_capability) == ("10.3.0.30", "NVIDIA L4", "8.9")
    assert (record.min_batch, record.opt_batch, record.max_batch) == (1, 64, 256)
    assert record.version_compatible and record.embeds_lean_runtime


@needs_onnx
def test_same_tensorrt_and_gpu_runs(engine_files):
    _, record = load_engine_metadata(engine_files())
    verdict = check_engine(record, L4)
    assert verdict.warnings == () and not verdict.allow_host_code


@needs_onnx
def test_other_tensorrt_version_refused_unless_version_compatible(engine_files):
    _, record = load_engine_metadata(engine_files())
    with pytest.raises(ModelMismatchError, match=r"10\.3\.0\.30.*10\.8\.0\.43.*--version-compatible"):
        check_engine(record, dataclasses.replace(L4, tensorrt_version="10.8.0.43"))

    _, record = load_engine_metadata(engine_files(version_compatible=True))
    verdict = check_engine(record, dataclasses.replace(L4, tensorrt_version="11.4.0.106"))
    assert verdict.allow_host_code  # the plan's own lean runtime does the work
    assert any("version compatibility" in w for w in verdict.warnings)
    with pytest.raises(ModelMismatchError, match="never older"):
        check_engine(record, dataclasses.replace(L4, tensorrt_version="10.1.0.27"))


@needs_onnx
def test_excluded_lean_runtime_needs_the_same_version(engine_files):
    _, record = load_engine_metadata(engine_files(version_compatible=True, exclude_lean_runtime=True))
    assert not check_engine(record, L4).allow_host_code
    with pytest.raises(ModelMismatchError, match="exclude-lean-runtime"):
        check_engine(record, dataclasses.replace(L4, tensorrt_version="10.8.0.43"))


@needs_onnx
def test_lean_runtime_runs_only_version_compatible_engines(engine_files):
    lean = dataclasses.replace(L4, lean=True)
    _, record = load_engine_metadata(engine_files())
    with pytest.raises(ModelMismatchError, match="lean runtime.*--version-compatible"):
        check_engine(record, lean)
    _, record = load_engine_metadata(engine_files(version_compatible=True))
    assert check_engine(record, lean).warnings == ()


@needs_onnx
def test_gpu_architecture_mismatch_refused_unless_hardware_compatible(engine_files):
    h100 = RuntimeFacts("10.3.0.30", False, "NVIDIA H100 80GB HBM3", (9, 0))
    _, record = load_engine_metadata(engine_files())
    with pytest.raises(ModelMismatchError, match=r"NVIDIA L4 \(compute capability 8\.9\).*H100.*9\.0.*ampere\+"):
        check_engine(record, h100)
    _, record = load_engine_metadata(engine_files(hardware_compatibility="ampere+"))
    assert check_engine(record, h100).warnings == ()
    with pytest.raises(ModelMismatchError, match="older than Ampere"):
        check_engine(record, RuntimeFacts("10.3.0.30", False, "Tesla T4", (7, 5)))
    _, record = load_engine_metadata(engine_files(hardware_compatibility="same-cc"))
    with pytest.raises(ModelMismatchError, match="architectures"):
        check_engine(record, h100)


@needs_onnx
def test_other_gpu_model_of_same_compute_capability(engine_files):
    rtx = RuntimeFacts("10.3.0.30", False, "NVIDIA RTX 4000 Ada Generation", (8, 9))
    _, record = load_engine_metadata(engine_files())
    with pytest.raises(ModelMismatchError, match="same-cc.*strict_gpu=False"):
        check_engine(record, rtx)
    assert any("RTX 4000" in w for w in check_engine(record, rtx, strict_gpu=False).warnings)
    _, record = load_engine_metadata(engine_files(hardware_compatibility="same-cc"))
    assert check_engine(record, rtx).warnings == ()


@needs_onnx
def test_engine_and_json_must_belong_together(engine_files):
    engine = engine_files(plan=b"plan A")
    _, record = load_engine_metadata(engine)
    check_plan_digest(engine.read_bytes(), record)
    with pytest.raises(ModelMismatchError, match="sha256"):
        check_plan_digest(b"plan B", record)


@needs_onnx
def test_onnx_json_beside_an_engine_is_refused(tmp_path):
    engine = tmp_path / "cells.engine"
    engine.write_bytes(b"plan")
    shutil.copy(ONNX.with_suffix(".json"), tmp_path / "cells.json")
    with pytest.raises(MetadataError, match="'onnx' artifact, not an engine"):
        load_engine_metadata(engine)
    (tmp_path / "cells.json").unlink()
    with pytest.raises(MetadataError, match="cells.json beside it"):
        load_engine_metadata(engine)


@needs_onnx
@pytest.mark.parametrize("field, value, message", [
    ("compute_capability", "sm_89", "compute capability"),
    ("max_batch", 0, "min <= opt <= max"),
    ("max_batch", "256", "integer"),
    ("version_compatible", "yes", "true or false"),
    ("hardware_compatibility", "turing+", "hardware_compatibility"),
    ("version", "latest", "TensorRT version"),
])
def test_broken_engine_records_name_the_field(engine_files, field, value, message):
    engine = engine_files()
    data = json.loads(engine.with_suffix(".json").read_text())
    data["tensorrt"][field] = value
    engine.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(MetadataError, match=message):
        load_engine_metadata(engine)
    del data["tensorrt"]["gpu_name"]
    engine.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(MetadataError, match="gpu_name"):
        load_engine_metadata(engine)


def test_exclude_lean_runtime_needs_version_compatible():
    with pytest.raises(MetadataError, match="only to version-compatible"):
        make_record(exclude_lean_runtime=True)


def test_version_and_compute_capability_parsing():
    assert parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert parse_version("11.4.0.106") > parse_version("10.16.1.11")
    assert parse_compute_capability("8.9") == (8, 9) and parse_compute_capability([12, 0]) == (12, 0)


@pytest.mark.parametrize("cuda_major, driver, refused", [
    (13, 13000, None), (13, 13020, None), (12, 13000, None),  # same or newer driver: fine
    (13, 12080, "this driver supports CUDA 12.8.*tensorrt-cu12"),  # an older driver: refused, with the way out
    (13, 0, "no NVIDIA driver was found"),
    (None, 12080, None),  # TensorRT from JetPack: its name does not say, nothing to check
])
def test_driver_older_than_tensorrt_s_cuda_is_refused(cuda_major, driver, refused):
    if refused is None:
        check_driver(cuda_major, driver)
    else:
        with pytest.raises(WbcEdgeError, match=f"built for CUDA {cuda_major} and needs an NVIDIA driver for "
                                               f"CUDA {cuda_major} or newer; {refused}"):
            check_driver(cuda_major, driver, "TensorRT 11.4.0.106")


def test_tensorrt_cuda_major_read_from_the_installed_distribution():
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("tensorrt_lean") is None:
        pytest.skip("tensorrt_lean is not installed (pip install tensorrt-lean-cu13)")
    names = importlib.metadata.packages_distributions()["tensorrt_lean"]
    expected = int(re.search(r"cu(\d+)", " ".join(names)).group(1))  # e.g. tensorrt_lean_cu13 -> 13
    assert tensorrt_cuda_major("tensorrt_lean") == expected
    assert tensorrt_cuda_major("numpy") is None  # installed, but its name says no CUDA
    assert tensorrt_cuda_major("no_such_module") is None
