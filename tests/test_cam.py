"""Class activation maps: the graph's CAM equals a gradient Grad-CAM computed
with torch, the ONNX model carries them, and Classifier gives them only when
asked."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is needed (pip install 'wbc-edge[train]')")
pytest.importorskip("onnx", reason="the onnx package is needed (pip install 'wbc-edge[export]')")

from wbc_edge import Classifier  # noqa: E402
from wbc_edge.errors import WbcEdgeError  # noqa: E402
from wbc_edge.preprocess import preprocess_batch  # noqa: E402
from wbc_edge.training.checkpoint import load_deployable  # noqa: E402


def grad_cam(model, x: torch.Tensor, cls: int) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) before its ReLU: layer4's channels
    weighted by the mean gradient of class ``cls``'s logit."""
    features = {}
    handle = model.net.layer4.register_forward_hook(lambda m, i, out: features.setdefault("f", out))
    try:
        x = x.clone().requires_grad_(False)
        logits = model.net(model.normalize(x))
        f = features["f"]
        (grad,) = torch.autograd.grad(logits[:, cls].sum(), f)
    finally:
        handle.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return (weights * f).sum(dim=1).detach()


@pytest.fixture(scope="module")
def model_and_inputs(shipped_fp32_checkpoint, cell_images):
    model, meta = load_deployable(shipped_fp32_checkpoint)
    images = preprocess_batch(cell_images[:6], meta.input_size, policy=meta.resize_policy)
    return model, meta, torch.from_numpy(images)


def test_cam_is_grad_cam_up_to_scale_and_averages_to_the_logit(model_and_inputs):
    model, meta, x = model_and_inputs
    classes, h, w = meta.cam_shape
    assert classes == meta.num_classes and (h, w) == (4, 4)  # 128 px input, five halvings
    with torch.inference_mode():
        outputs = model(x).numpy()
    columns = meta.output_columns
    logits = outputs[:, columns["logits"]]
    maps = outputs[:, columns["cam"]].reshape(len(x), classes, h, w)
    bias = model.net.fc.bias.detach().numpy()
    np.testing.assert_allclose(maps.mean(axis=(2, 3)) + bias, logits, rtol=1e-4, atol=1e-4)
    for cls in (0, int(logits[0].argmax()), classes - 1):
        expected = grad_cam(model, x, cls).numpy() * (h * w)  # Grad-CAM's weights carry 1/(h*w)
        np.testing.assert_allclose(maps[:, cls], expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    # not a constant map: a cell has a place where its evidence lies
    best = logits.argmax(axis=1)
    assert all(np.ptp(maps[i, best[i]]) > 0.1 for i in range(len(x)))


def test_exported_model_carries_the_maps_and_the_classifier_gives_them_when_asked(
        shipped_fp32_checkpoint, model_and_inputs, sample_dir, sample_paths, tmp_path):
    from wbc_edge.export.onnx_export import export_checkpoint

    _model, meta, _ = model_and_inputs
    path = tmp_path / "cam.onnx"
    result = export_checkpoint(shipped_fp32_checkpoint, path, verify_images=sample_dir)
    assert result.metadata.cam == {"shape": list(meta.cam_shape), "layer": "layer4"}
    paths = sample_paths[:5]
    with Classifier.load(path, backend="onnxruntime") as onnx_model, Classifier.load(shipped_fp32_checkpoint, backend="torch") as torch_model:
        plain = onnx_model.predict_batch(paths)
        assert all(p.cam is None for p in plain)
        explained = onnx_model.predict_batch(paths, cam=True)
        reference = torch_model.predict_batch(paths, cam=True)
        streamed = list(onnx_model.predict_stream(iter(paths), batch_size=2, cam=True))
    for a, b, c, s in zip(plain, explained, reference, streamed):
        assert a.label == b.label and a.confidence == b.confidence  # asking for maps changes nothing else
        assert b.cam.shape == meta.cam_shape and b.cam.dtype == np.float32
        np.testing.assert_allclose(b.cam, c.cam, rtol=1e-3, atol=1e-3 * np.abs(c.cam).max())
        np.testing.assert_array_equal(s.cam, b.cam)
        assert "cam" not in b.to_dict()


def test_asking_a_model_without_maps_is_a_clear_error(shipped_fp32_checkpoint, sample_dir, sample_paths, tmp_path):
    from wbc_edge.export.onnx_export import export_checkpoint

    path = tmp_path / "nocam.onnx"
    export_checkpoint(shipped_fp32_checkpoint, path, verify_images=sample_dir, cam=False)
    with Classifier.load(path) as model:
        assert model.metadata.cam is None
        assert model.predict(sample_paths[0]).cam is None
        with pytest.raises(WbcEdgeError, match="no class activation maps"):
            model.predict_batch(sample_paths[:1], cam=True)
