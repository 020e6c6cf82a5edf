"""Checkpoints: saving atomically, loading without unpickling arbitrary code.

A checkpoint is a dict of tensors and plain Python values, loaded with
``torch.load(..., weights_only=True)``. Its ``model`` entry is a torchvision-
style ResNet state_dict; ``meta`` holds the model metadata (classes, input
size, normalization, temperature). Foreign state_dicts are accepted bare or
under ``state_dict`` / ``model_state_dict``, with or without ``module.``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from wbc_edge.errors import WbcEdgeError
from wbc_edge.metadata import ModelMetadata

from .resnet import ResNet, resnet18


class CheckpointError(WbcEdgeError):
    """A checkpoint that cannot be used, and why."""


def save_checkpoint(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Writes ``payload`` to ``path`` atomically: a crash mid-write leaves the
    previous checkpoint intact."""
    from wbc_edge.atomic import write_atomic

    return write_atomic(path, writer=lambda f: torch.save(payload, f), make_parents=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True``: tensors and plain values
    only, never arbitrary pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain values, "
            f"which could run code when unpickled{_unsafe_global(error)}. Do not load it with "
            "weights_only=False unless you made it yourself; a checkpoint from 'wbc-edge train' holds only "
            "tensors and plain values"
        ) from None
    except Exception as error:  # truncated, not a torch file, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    return data


def _unsafe_global(error: Exception) -> str:
    """The object torch refused (its 'Unsupported global: GLOBAL x' line),
    without torch's advice to load the file unsafely."""
    for line in str(error).splitlines():
        if "GLOBAL" in line:
            return f" ({line.strip().rstrip('.')[:200]})"
    return ""


def extract_state_dict(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model state_dict inside a checkpoint, a DataParallel prefix removed."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(data.get(key), dict):
            data = data[key]
            break
    state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError("no model weights found (expected a state_dict, bare or under 'state_dict')")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def num_classes_of(state: dict[str, torch.Tensor]) -> int:
    if "fc.weight" not in state:
        raise CheckpointError("not a ResNet state_dict: it has no 'fc.weight'")
    return int(state["fc.weight"].shape[0])


def load_resnet18(state: dict[str, torch.Tensor]) -> ResNet:
    """A ResNet-18 with ``state`` loaded strictly (every name must match)."""
    # BatchNorm layers carry running statistics; GroupNorm layers do not.
    norm = "batch" if "bn1.running_mean" in state else "group"
    model = resnet18(num_classes=num_classes_of(state), norm=norm)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"weights do not fit ResNet-18: {error}") from None
    return model


def metadata_of(data: dict[str, Any], path: str | os.PathLike | None = None) -> ModelMetadata:
    """The model metadata stored in a wbc-edge checkpoint."""
    meta = data.get("meta")
    if not isinstance(meta, dict):
        where = f"{path}: " if path else ""
        raise CheckpointError(
            f"{where}no 'meta' record (classes, input size, normalization); "
            "a bare state_dict needs them supplied, see wbc_edge.metadata.ModelMetadata"
        )
    return ModelMetadata.from_dict({**meta, "format": "checkpoint"})


def load_model(path: str | os.PathLike, data: dict[str, Any] | None = None) -> tuple[ResNet, ModelMetadata]:
    """Loads a wbc-edge checkpoint as (ResNet-18 in eval mode, metadata)."""
    data = load_checkpoint(path) if data is None else data
    meta = metadata_of(data, path)
    model = load_resnet18(extract_state_dict(data))
    if model.fc.out_features != meta.num_classes:
        raise CheckpointError(
            f"{path}: the model has {model.fc.out_features} outputs but the metadata names "
            f"{meta.num_classes} classes"
        )
    return model.eval(), meta


def guard_of(data: dict[str, Any]):
    """The checkpoint's domain guard (a ``DomainGuard``), or None without one."""
    state = data.get("domain_guard")
    if not isinstance(state, dict):
        return None
    from .domain_guard import DomainGuard

    try:
        return DomainGuard.from_state(state)
    except (KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"the checkpoint's domain_guard record is incomplete ({error})") from None


def load_deployable(path: str | os.PathLike, cam: bool = True):
    """(``DeployableModel`` in eval mode, metadata) of a checkpoint: the
    network with its input normalization, where fitted its domain guard, and
    with ``cam`` its class activation maps (as an exported model has them).
    An FP32 ``.onnx`` from ``wbc-edge export`` works too (``from_onnx``)."""
    if Path(path).suffix.lower() == ".onnx":
        from .from_onnx import deployable_from_onnx

        return deployable_from_onnx(path, cam)
    from .deployable import DeployableModel

    data = load_checkpoint(path)
    net, meta = load_model(path, data)
    guard = guard_of(data)
    if (guard is None) != (meta.domain_guard is None):
        raise CheckpointError(f"{path}: the domain guard's statistics and its metadata record must come together")
    model = DeployableModel(net, meta.mean, meta.std, meta.input_normalization, guard, cam).eval()
    return model, meta.replace(cam=model.cam_metadata(meta.input_size))
