"""What the extra outputs cost: the shipped weights exported three ways (plain;
with the domain guard; with the guard and the class activation maps), each run
by ``Classifier.predict_batch`` on the same stacked cells (onnxruntime FP32,
all threads). The baseline is the plain model. The guard is fitted on these
cells' own features, as training fits it (only its cost is measured here)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.workload import tile
from wbc_edge import Classifier, preprocess_batch

BATCH = 64
OUTPUT_HEADS = ("plain", "guard", "guard+cam")


@pytest.fixture(scope="module")
def exported(prototype, decoded_images, tmp_path_factory):
    """variant -> an FP32 ONNX of the shipped weights with those outputs."""
    import torch

    from wbc_edge.export.onnx_export import export_checkpoint
    from wbc_edge.training.checkpoint import save_checkpoint
    from wbc_edge.training.deployable import Normalize
    from wbc_edge.training.domain_guard import DEFAULT_STAGES, DomainGuard, fit_guard, stage_features

    net, meta = prototype
    images = preprocess_batch(decoded_images, meta.input_size, policy=meta.resize_policy)
    normalize = Normalize(meta.mean, meta.std, meta.input_normalization)
    features = stage_features(net, normalize, images, DEFAULT_STAGES)
    with torch.no_grad():
        labels = net(normalize(torch.from_numpy(images))).argmax(1).numpy()
    guard = DomainGuard.from_statistics(fit_guard(features, labels, meta.num_classes, DEFAULT_STAGES))
    record = {"method": "mahalanobis", "stages": list(DEFAULT_STAGES), "threshold": 1.0, "shift_fraction": 0.15}
    folder = tmp_path_factory.mktemp("extra-outputs")
    plain = save_checkpoint({"model": net.state_dict(), "meta": meta.to_dict()}, folder / "plain.pt")
    guarded = save_checkpoint({"model": net.state_dict(), "meta": {**meta.to_dict(), "domain_guard": record},
                               "domain_guard": guard.state()}, folder / "guard.pt")
    return {
        "plain": export_checkpoint(plain, folder / "plain.onnx", cam=False).path,
        "guard": export_checkpoint(guarded, folder / "guard.onnx", cam=False).path,
        "guard+cam": export_checkpoint(guarded, folder / "guard-cam.onnx", cam=True).path,
    }


@pytest.mark.parametrize("variant", OUTPUT_HEADS)
def test_predict_batch_with_extra_outputs(measure, exported, prototype, decoded_images, all_threads, variant):
    _, meta = prototype
    stack = tile(preprocess_batch(decoded_images, meta.input_size, policy=meta.resize_policy), BATCH)
    with Classifier.load(exported[variant], num_threads=all_threads) as clf:
        predictions = measure(lambda: clf.predict_batch(stack), stage="extra outputs",
                              name=f"predict_batch, {variant}", backend="onnxruntime", precision="fp32",
                              images=BATCH, batch=BATCH, threads=all_threads, baseline=variant == "plain",
                              note="the shipped weights; guard: Mahalanobis on stages 3+4; cam: layer4 maps "
                                   "(computed always, returned only with cam=True)")
    assert len(predictions) == BATCH and all(p.ok for p in predictions)
    assert (predictions[0].ood_score is None) == (variant == "plain")
    assert np.isfinite([p.confidence for p in predictions]).all()
