"""A PyTorch model from an FP32 ONNX model made by ``wbc-edge export``.

Export keeps BatchNorm unfolded and names every initializer after the
state_dict (``net.layer1.0.conv1.weight``, ``guard.whitening``), so the ONNX
file holds the whole network and its domain guard: the torch backend and
``wbc-edge adapt`` start from the shipped model itself, with nothing
unpickled and no second copy of the weights in the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from wbc_edge.errors import WbcEdgeError
from wbc_edge.metadata import ModelMetadata

GUARD_PREFIX = "guard."


def read_onnx_model(path: str | os.PathLike):
    """(ResNet-18 state_dict as tensors, domain guard or None, metadata) of an FP32 wbc-edge ONNX file."""
    from wbc_edge.export.onnx_files import load_model
    from wbc_edge.export.weight_storage import materialize_fp32_weights, state_dict_from_onnx

    path = Path(path)
    proto, meta = load_model(path)
    if meta.precision != "fp32" or meta.quantization:
        raise WbcEdgeError(f"{path}: a {meta.precision} model; PyTorch needs the FP32 one "
                           "(the .fp32.onnx beside it, or a .pt checkpoint)")
    try:
        state = {k: torch.from_numpy(np.array(v)) for k, v in state_dict_from_onnx(proto).items()}
    except ValueError as error:
        raise WbcEdgeError(f"{path}: {error}") from None
    guard = None
    if meta.domain_guard is not None:
        from onnx import numpy_helper

        from .domain_guard import DomainGuard

        materialize_fp32_weights(proto)
        values = {init.name[len(GUARD_PREFIX):]: torch.from_numpy(np.array(numpy_helper.to_array(init), np.float32))
                  for init in proto.graph.initializer if init.name.startswith(GUARD_PREFIX)}
        try:
            guard = DomainGuard.from_state({"stages": meta.domain_guard["stages"], **values})
        except KeyError as error:
            raise WbcEdgeError(f"{path}: the domain guard's tensors are not in the graph ({error})") from None
    return state, guard, meta


def deployable_from_onnx(path: str | os.PathLike, cam: bool = True):
    """(``DeployableModel`` in eval mode, metadata) rebuilt from an FP32 ONNX
    file: the same network, guard and outputs as the file computes."""
    from .checkpoint import load_resnet18
    from .deployable import DeployableModel

    state, guard, meta = read_onnx_model(path)
    model = DeployableModel(load_resnet18(state), meta.mean, meta.std, meta.input_normalization, guard, cam).eval()
    meta: ModelMetadata = meta.replace(cam=model.cam_metadata(meta.input_size))
    return model, meta
