"""The prototype that wbc-edge replaces: the baseline of every speed-up.

This is the research code path, as a prototype's README would show it::

    model = resnet18(num_classes=8); model.load_state_dict(...); model.eval()
    for path in paths:
        image = Image.open(path).convert("RGB")
        box = find_cell(np.asarray(image), H, W)        # numpy, for a cell-centring model
        image = image.resize((W, H), Image.BILINEAR, box=box)
        x = np.asarray(image, np.float32) / 255
        x = (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-4)   # per-image model; else (x - MEAN) / STD
        x = torch.from_numpy(np.stack([x.transpose(2, 0, 1)]))
        with torch.no_grad():
            confidence, index = torch.softmax(model(x), dim=1).max(dim=1)

Pillow does the resize (one thread, the GIL held between calls), numpy the cell
finding (the plain reference of the C++ finder, ``tests/reference_cell_box.py``)
and the normalization in float32, PyTorch eager runs the ResNet-18 in FP32,
NCHW, one image per call, with PyTorch's default thread count. It uses the same
input size, resize policy and normalization as the SDK (the model's metadata)
and the same weights: a checkpoint when one is given, else the weights rebuilt
from the shipped FP32 ONNX model (:func:`load_prototype_model`), so both give
the same labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from wbc_edge.metadata import ModelMetadata


def prototype_preprocess(images: Sequence, size: tuple[int, int], mean: Sequence[float],
                         std: Sequence[float], *, policy: str = "stretch",
                         normalization: str = "dataset") -> np.ndarray:
    """The prototype's preprocessing of a batch: float32 NCHW ``(n, 3, H, W)``.

    Each image is a decoded uint8 array (``Image.fromarray``) or a file path
    (``Image.open``); then ``convert("RGB")``, the field the resize ``policy``
    names (``stretch``: the whole image; ``center_crop``: its centred region of
    the output's aspect; ``cell_center``: the numpy cell finder's box),
    ``resize((W, H), BILINEAR, box=...)``, ``np.asarray(float32) / 255``, the
    normalization (``dataset``: ``(x - mean) / std``; ``per_image``: each
    channel by its own mean and variance, as the model graph does), HWC -> CHW,
    and ``np.stack``. (For ``stretch`` with ``dataset``,
    ``wbc_edge.preprocess_batch(..., dtype=np.float32)`` gives exactly this
    array, bit for bit.)
    """
    height, width = size
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    tensors = []
    for item in images:
        if isinstance(item, np.ndarray):
            image = Image.fromarray(item)
        else:
            image = Image.open(item)
        with image:
            rgb = image.convert("RGB")
        box = _field(np.asarray(rgb), height, width, policy)
        resized = rgb.resize((width, height), Image.BILINEAR, box=box)
        x = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
        if normalization == "per_image":
            # statistics accumulated in float64: a float32 sum of a whole image drifts
            centred = x - x.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
            variance = (centred * centred).mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
            x = centred / np.sqrt(variance + np.float32(1e-4))
        else:
            x = (x - mean) / std
        tensors.append(x.transpose(2, 0, 1))
    return np.stack(tensors)


def prototype_inputs(images: Sequence, metadata: ModelMetadata) -> np.ndarray:
    """:func:`prototype_preprocess` as the model's metadata asks (size, resize
    policy, normalization)."""
    return prototype_preprocess(images, metadata.input_size, metadata.mean, metadata.std,
                                policy=metadata.resize_policy, normalization=metadata.input_normalization)


def _field(pixels: np.ndarray, height: int, width: int, policy: str) -> tuple[float, float, float, float] | None:
    """The source box the resize reads, for a resize policy (None: the whole image)."""
    if policy == "stretch":
        return None
    from tests.reference_resize import center_crop_box

    if policy == "center_crop":
        return center_crop_box(pixels.shape[1], pixels.shape[0], width, height)
    if policy == "cell_center":
        from tests.reference_cell_box import find_cell

        return find_cell(pixels, height, width)[0]
    raise ValueError(f"the prototype has no resize policy {policy!r}")


def prototype_decode(paths: Sequence) -> list[np.ndarray]:
    """The prototype's image reading: ``Image.open(path).convert("RGB")``, one
    file after another."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB")))
    return images


class PrototypeLoop:
    """The prototype's classification loop: one image at a time, from file to
    (label, confidence), PyTorch eager at batch 1 (on a GPU: the input tensor
    moved there, the result read back by ``.item()``)."""

    def __init__(self, net, metadata: ModelMetadata, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)
        self.metadata = metadata

    def classify(self, path) -> tuple[str, float]:
        torch = self.torch
        meta = self.metadata
        x = torch.from_numpy(prototype_inputs([path], meta))
        if self.device.type != "cpu":
            x = x.to(self.device)
        with torch.no_grad():
            probabilities = torch.softmax(self.net(x), dim=1)
        confidence, index = probabilities.max(dim=1)
        return meta.classes[int(index.item())], float(confidence.item())

    def run(self, paths: Sequence) -> list[tuple[str, float]]:
        return [self.classify(path) for path in paths]


# ------------------------------------------------------------------- weights

def load_prototype_model(checkpoint: str | os.PathLike | None = None,
                         onnx_path: str | os.PathLike | None = None):
    """The prototype's network: a plain ResNet-18 in FP32 eval mode, and the
    model metadata (input size, normalization, classes) and where the weights
    came from.

    ``checkpoint`` given: a wbc-edge checkpoint (loaded with weights_only=True).
    Otherwise the weights are rebuilt from ``onnx_path`` (default: the shipped
    FP32 model), so the prototype runs the very model the SDK runs.

    Returns ``(net, metadata, source)``; ``source`` describes the origin.
    """
    if checkpoint is not None:
        from wbc_edge.training.checkpoint import load_model

        net, meta = load_model(checkpoint)
        return net.eval(), meta, f"checkpoint {checkpoint}"
    if onnx_path is None:
        from wbc_edge.models import variant_path

        onnx_path = variant_path("fp32")
    net, meta, how = resnet_from_onnx(onnx_path)
    return net, meta, f"rebuilt from {onnx_path} ({how})"


def resnet_from_onnx(path: str | os.PathLike):
    """A torch ResNet-18 with the weights of an FP32 wbc-edge ONNX model, its
    metadata, and how the weights were read.

    An ONNX file from ``wbc-edge export`` keeps BatchNorm unfolded and the
    ResNet's parameter names (``wbc_edge.export.weight_storage.
    state_dict_from_onnx`` reads it). A graph whose BatchNorm was folded into
    the convolutions (the interim model) is rebuilt here: each folded
    convolution's weight goes to the conv and its bias to the following
    BatchNorm, set to an identity plus that bias (mean 0, variance 1 - eps,
    scale 1), so the network computes the same function with the same layers
    and the same amount of work as the original.
    """
    import onnx
    import torch

    from wbc_edge.metadata import ONNX_METADATA_KEY, resolve_metadata
    from wbc_edge.training.checkpoint import load_resnet18

    path = Path(path)
    model = onnx.load(str(path))
    embedded = {p.key: p.value for p in model.metadata_props}.get(ONNX_METADATA_KEY)
    meta = resolve_metadata(path, embedded)
    state, how = None, "unfolded BatchNorm, ResNet parameter names"
    try:
        from wbc_edge.export.weight_storage import state_dict_from_onnx
    except ImportError:  # the export helper is not there: only folded graphs can be read
        state_dict_from_onnx = None
    if state_dict_from_onnx is not None:
        try:
            state = state_dict_from_onnx(model)
        except ValueError:
            state = None
    if state is None:
        state, how = state_dict_from_folded_onnx(model), "BatchNorm folded into the convolutions, unfolded here"
    net = load_resnet18({name: torch.from_numpy(np.asarray(v)) for name, v in state.items()})
    return net.eval(), meta, how


def state_dict_from_folded_onnx(model) -> dict[str, np.ndarray]:
    """A ResNet-18 state_dict from an exported graph whose BatchNorm layers were
    folded into the convolutions (``Conv`` nodes with a bias, named after the
    torch modules, for example ``/net/layer1/layer1.0/conv1/Conv``)."""
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:  # constants the exporter emitted as nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    state: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            if len(node.input) != 3:
                raise ValueError(f"{node.name}: a folded convolution needs a bias input")
            conv = _module_name(node.name)
            batchnorm = _batchnorm_of(conv)
            weight, bias = values[node.input[1]], values[node.input[2]]
            channels = weight.shape[0]
            state[f"{conv}.weight"] = np.array(weight, dtype=np.float32)
            state[f"{batchnorm}.weight"] = np.ones(channels, np.float32)
            state[f"{batchnorm}.bias"] = np.array(bias, dtype=np.float32)
            state[f"{batchnorm}.running_mean"] = np.zeros(channels, np.float32)
            # BatchNorm divides by sqrt(var + eps): var = 1 - eps makes it 1.
            state[f"{batchnorm}.running_var"] = np.full(channels, 1.0 - 1e-5, np.float32)
            state[f"{batchnorm}.num_batches_tracked"] = np.zeros((), np.int64)
        elif node.op_type == "Gemm":
            state["fc.weight"] = np.array(values[node.input[1]], dtype=np.float32)
            state["fc.bias"] = np.array(values[node.input[2]], dtype=np.float32)
    if "fc.weight" not in state:
        raise ValueError("no classifier layer (Gemm) found: not an exported ResNet-18")
    return state


def _module_name(node_name: str) -> str:
    """``/net/layer2/layer2.0/downsample/downsample.0/Conv`` -> ``layer2.0.downsample.0``
    (the exporter names each scope by the module's name, and nested
    containers repeat their parent's)."""
    scopes = node_name.strip("/").split("/")[:-1]
    if scopes and scopes[0] == "net":
        scopes = scopes[1:]
    parts: list[str] = []
    for scope in scopes:
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope
        else:
            parts.append(scope)
    if not parts:
        raise ValueError(f"{node_name!r}: cannot tell which ResNet module this convolution is")
    return ".".join(parts)


def _batchnorm_of(conv: str) -> str:
    """The BatchNorm that follows a ResNet convolution: ``conv1`` -> ``bn1``,
    ``layer1.0.conv2`` -> ``layer1.0.bn2``, ``downsample.0`` -> ``downsample.1``."""
    head, _, last = conv.rpartition(".")
    prefix = f"{head}." if head else ""
    if last.startswith("conv"):
        return f"{prefix}bn{last[len('conv'):]}"
    if last == "0" and head.endswith("downsample"):
        return f"{head}.1"
    raise ValueError(f"{conv!r}: not a ResNet convolution followed by BatchNorm")
