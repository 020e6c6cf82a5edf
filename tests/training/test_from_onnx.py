"""The torch backend runs the shipped FP32 ONNX model itself (weights, guard
and activation maps read back from the graph), matching ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is needed (pip install 'wbc-edge[torch]')")
pytest.importorskip("onnx", reason="the onnx package is needed (pip install 'wbc-edge[export]')")

from wbc_edge import Classifier  # noqa: E402
from wbc_edge.errors import WbcEdgeError  # noqa: E402
from wbc_edge.models import shipped_models, variant_path  # noqa: E402


def test_torch_runs_the_shipped_model_as_onnx_runtime_does(sample_paths):
    if "fp32" not in shipped_models():
        pytest.skip("the FP32 model is not in this checkout")
    paths = sample_paths[:12]
    with Classifier.load(backend="torch") as by_torch, Classifier.load(precision="fp32", backend="onnxruntime") as by_ort:
        assert by_torch.backend == "torch" and by_torch.metadata.classes == by_ort.metadata.classes
        a, b = by_torch.predict_batch(paths), by_ort.predict_batch(paths)
    assert [p.label for p in a] == [p.label for p in b]
    for x, y in zip(a, b):
        np.testing.assert_allclose(list(x.probabilities.values()), list(y.probabilities.values()), atol=1e-4)
        assert (x.ood_score is None) == (y.ood_score is None)
        if x.ood_score is not None:
            assert x.ood_score == pytest.approx(y.ood_score, rel=1e-3)
            assert x.out_of_distribution == y.out_of_distribution


def test_torch_refuses_a_quantized_onnx_with_the_reason():
    int8 = variant_path("int8-cpu")
    if not int8.is_file():
        pytest.skip("the INT8 CPU model is not in this checkout")
    with pytest.raises(WbcEdgeError, match="PyTorch needs the FP32 one"):
        Classifier.load(int8, backend="torch")
