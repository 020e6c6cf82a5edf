"""PyTorch checkpoint -> FP32 ONNX (uint8 NHWC input, normalization in the graph), verified.

The exporter is PyTorch's TorchScript-based one (``torch.onnx.export(...,
dynamo=False)``), chosen over the torch.export-based default after comparing
what each writes for this model (torch 2.13):

* TorchScript exporter, ``training=PRESERVE`` on the eval-mode model: the
  classic ResNet graph (Conv, BatchNormalization, Relu, Add, MaxPool,
  GlobalAveragePool, Flatten, Gemm; 20 convolutions), BatchNorm kept unfolded,
  every initializer named after the state_dict (``net.layer1.0.conv1.weight``),
  opset selectable (17 by default), 1.7 s.
* torch.export-based exporter: with its optimizer on (the default) it folds
  BatchNorm into the convolutions, which breaks lossless float16 weight storage
  (see ``weight_storage``) and the state_dict names; with the optimizer off it
  keeps BatchNorm but writes Shape/Range/Gather/Concat/Reshape chains for the
  flatten and ReduceMean for the pooling (60+ extra nodes), opset >= 18, 7 s,
  and needs onnxscript.

The TorchScript exporter is deprecated in PyTorch but present and tested in
torch 2.13 (the version this project pins); if a later PyTorch removes it, this
module fails with a clear error rather than writing a different graph.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wbc_edge.errors import WbcEdgeError, require
from wbc_edge.metadata import ModelMetadata, sha256_of, sidecar_path

from .verify import ParityReport, check_parity, default_verification_dir, load_verification_images

DEFAULT_OPSET = 17
#: fp32: weights as float32 initializers; fp16: weights rounded once to float16-representable
#: values and stored as float16 + Cast (lossless, half the size; compute stays float32).
WEIGHT_STORAGES = ("fp32", "fp16")
TORCH_INSTALL = "pip install 'wbc-edge[export]'  (PyTorch CPU: torch==2.13.0, onnx)"


@dataclass
class ExportResult:
    path: Path
    metadata: ModelMetadata
    parity: ParityReport
    size_bytes: int
    weights_fp16: list[str] = field(default_factory=list)
    rounding: dict | None = None

    def summary(self) -> dict:
        return {
            "onnx": str(self.path),
            "sidecar": str(sidecar_path(self.path)),
            "size_bytes": self.size_bytes,
            "weight_storage": self.metadata.extra.get("weight_storage"),
            "initializers_stored_fp16": len(self.weights_fp16),
            "rounding": self.rounding,
            "parity": self.parity.to_dict(),
        }


def deployable_from_state(state, meta: ModelMetadata, guard=None, cam: bool = False):
    """The exported module: ``DeployableModel`` around a ResNet-18 with
    ``state`` (and the checkpoint's domain guard, if any; class activation
    maps with ``cam``), in eval mode."""
    from wbc_edge.training.checkpoint import load_resnet18
    from wbc_edge.training.deployable import DeployableModel

    return DeployableModel(load_resnet18(state), meta.mean, meta.std, meta.input_normalization, guard, cam).eval()


def to_onnx(model, meta: ModelMetadata, opset: int = DEFAULT_OPSET):
    """Traces ``model`` (a DeployableModel in eval mode) into an ONNX ModelProto:
    input ``input`` uint8 [N, H, W, 3] (N dynamic), output ``logits`` float32
    [N, classes], BatchNorm unfolded."""
    import onnx
    import torch

    height, width = meta.input_size
    example = torch.zeros((2, height, width, 3), dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Deliberate choices, not problems: the TorchScript exporter, and constant
        # folding with PRESERVE (the model is in eval mode, so nothing trainable moves).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\..*")
        try:
            torch.onnx.export(
                model, (example,), buffer, dynamo=False, opset_version=opset,
                # PRESERVE on an eval-mode model: BatchNormalization nodes in inference
                # form, not folded into the convolutions (EVAL folds them).
                training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                input_names=["input"], output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        except (TypeError, AttributeError) as error:  # a PyTorch without the TorchScript exporter
            raise WbcEdgeError(f"torch.onnx.export (TorchScript exporter, dynamo=False) failed: {error}; "
                               "this export needs torch==2.13.0") from None
    proto = onnx.load_from_string(buffer.getvalue())
    proto.producer_name, proto.producer_version = "wbc-edge", _version()
    return proto


def _version() -> str:
    from wbc_edge import __version__

    return __version__


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, *, opset: int = DEFAULT_OPSET,
                      weight_storage: str = "fp32", verify_images: str | os.PathLike | None = None,
                      relative_tolerance: float | None = None, cam: bool = True) -> ExportResult:
    """Exports a wbc-edge checkpoint to ``out`` (ONNX + JSON sidecar) and
    verifies it against PyTorch on real cell images (``verify_images``, by
    default the repository's ``examples/``). With ``cam`` the outputs include
    each class's activation map (``ModelMetadata.cam``). Raises ParityError, leaving no
    output behind, when the ONNX model does not reproduce PyTorch."""
    require("torch", "PyTorch", TORCH_INSTALL)
    require("onnx", "the onnx package", TORCH_INSTALL)
    import torch

    from wbc_edge.atomic import check_output, move_into_place
    from wbc_edge.training.checkpoint import extract_state_dict, guard_of, load_checkpoint, metadata_of

    from . import weight_storage as storage
    from .onnx_files import save_model

    if weight_storage not in WEIGHT_STORAGES:
        raise WbcEdgeError(f"weight_storage must be one of {WEIGHT_STORAGES}, got {weight_storage!r}")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise WbcEdgeError(f"{out}: the output name must end in .onnx")
    check_output(out, "the ONNX output", make_parents=True)
    check_output(sidecar_path(out), "the ONNX output's metadata", make_parents=True)
    folder = Path(verify_images) if verify_images is not None else default_verification_dir()
    if folder is None:
        raise WbcEdgeError("no verification images: pass --verify-images DIR, a folder of real cell "
                           "images (a few per class, e.g. from the training data)")

    data = load_checkpoint(checkpoint)
    meta = metadata_of(data, checkpoint)
    images, names = load_verification_images(folder, meta)
    state = extract_state_dict(data)
    rounding = None
    if weight_storage == "fp16":
        state, rounding = storage.round_state_dict_to_fp16(state)
    reference = deployable_from_state(state, meta, guard_of(data), cam)
    meta = meta.replace(cam=reference.cam_metadata(meta.input_size))
    proto = to_onnx(reference, meta, opset)
    stored = storage.store_weights_as_fp16(proto) if weight_storage == "fp16" else []

    meta = meta.replace(
        format="onnx", precision="fp32", source_sha256=sha256_of(checkpoint), quantization=None, tensorrt=None,
        extra={**meta.extra, "weight_storage": weight_storage, "opset": opset,
               "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=False)"},
    )
    with torch.inference_mode():
        expected = reference(torch.from_numpy(images)).numpy()

    tmp = out.with_name(out.stem + ".unverified.onnx")
    try:
        save_model(proto, tmp, meta)
        parity = verify_file(tmp, expected, images, names, relative_tolerance, label=out.name)
        move_into_place(tmp, out)
        move_into_place(sidecar_path(tmp), sidecar_path(out))
    finally:
        for leftover in (tmp, sidecar_path(tmp)):
            if leftover.exists():
                leftover.unlink()
    return ExportResult(path=out, metadata=meta, parity=parity, size_bytes=out.stat().st_size,
                        weights_fp16=stored, rounding=rounding)


def verify_file(path: Path, expected: np.ndarray, images: np.ndarray, names: list[str],
                relative_tolerance: float | None = None, label: str | None = None) -> ParityReport:
    """Runs the ONNX file with ONNX Runtime (CPU) on ``images``, as one batch and
    the first image alone (the batch dimension is dynamic), and checks it
    against ``expected`` logits."""
    from wbc_edge.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path) as runner:
        got = runner.infer(images)
        single = runner.infer(images[:1])
    tolerance = {} if relative_tolerance is None else {"relative_tolerance": relative_tolerance}
    label = label or path.name
    check_parity(expected[:1], single, names[:1], what=f"{label}, batch of 1, vs PyTorch", **tolerance)
    return check_parity(expected, got, names, what=f"{label} (ONNX Runtime) vs PyTorch", **tolerance)
