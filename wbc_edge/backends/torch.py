"""PyTorch backend: the reference for parity tests, and a GPU path where
TensorRT is absent. Runs a wbc-edge checkpoint through the same deployed input
path as the exported graph (uint8 NHWC in, normalization inside)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import WbcEdgeError, require
from .base import Runner

INSTALL = "pip install 'wbc-edge[torch]'  (PyTorch CPU: torch==2.13.0)"


class TorchRunner(Runner):
    name = "torch"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", half: bool | None = None,
                 channels_last: bool = True):
        torch = require("torch", "PyTorch", INSTALL)
        from ..training.checkpoint import load_model
        from ..training.deployable import DeployableModel

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise WbcEdgeError("device 'cuda' requested but PyTorch sees no CUDA GPU here")
        net, meta = load_model(Path(path))
        super().__init__(meta)
        self.path = Path(path)
        self.device = torch.device(device)
        # FP16 only where it is fast (CUDA); the CPU stays FP32.
        self.half = bool(half) if half is not None else self.device.type == "cuda"
        model = DeployableModel(net, meta.mean, meta.std).to(self.device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.half:
            model.net.half()
        self.model = model
        self._torch = torch

    def _infer(self, images: np.ndarray) -> np.ndarray:
        torch = self._torch
        batch = torch.from_numpy(images)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with self._lock, torch.inference_mode():
            x = self.model.normalize(batch)
            if self.half:
                x = x.half()
            x = x.contiguous(memory_format=torch.channels_last)
            logits = self.model.net(x)
            return logits.float().cpu().numpy()

    def close(self) -> None:
        self.model = None
        super().close()

    def describe(self) -> dict:
        return {**super().describe(), "device": str(self.device), "half": self.half, "model": str(self.path)}
