"""The network as deployed: uint8 RGB images in, logits out.

The graph itself casts, scales, normalizes and transposes, so the host ships
1 byte per channel to the accelerator and host preprocessing is only geometry
(``wbc_edge.preprocess_batch``). Export, the torch backend and evaluation all
run this module, so there is one definition of the input contract.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """uint8 NHWC [N, H, W, 3] -> float NCHW ``(x / 255 - mean) / std``."""

    def __init__(self, mean, std):
        super().__init__()
        # Not persistent: the values live in the model metadata, and the state
        # dict stays a plain torchvision-style ResNet one.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return (x - self.mean) / self.std


class DeployableModel(nn.Module):
    """``logits = net(normalize(images))`` for uint8 ``[N, H, W, 3]`` images."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.normalize(images))
