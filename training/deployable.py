"""The network as deployed: uint8 RGB images in, logits out.

The graph itself casts, scales, normalizes and transposes, so the host ships
1 byte per channel to the accelerator and host preprocessing is only geometry
(``wbc_edge.preprocess_batch``). Export, the torch backend and evaluation all
run this module, so there is one definition of the input contract.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wbc_edge.metadata import INPUT_NORMALIZATIONS


class Normalize(nn.Module):
    """uint8 NHWC [N, H, W, 3] -> float NCHW ``(x / 255 - mean) / std``, with
    the training set's channel mean and std (``"dataset"``) or each image's
    own (``"per_image"``: its channels standardized to mean 0, std 1, which
    takes a lab's stain intensity and white balance out before the first
    convolution)."""

    def __init__(self, mean, std, mode: str = "dataset"):
        super().__init__()
        if mode not in INPUT_NORMALIZATIONS:
            raise ValueError(f"input normalization must be one of {INPUT_NORMALIZATIONS}, got {mode!r}")
        self.mode = mode
        # Not persistent: the values live in the model metadata, and the state
        # dict stays a plain torchvision-style ResNet one.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.standardize(images.permute(0, 3, 1, 2).to(torch.float32) / 255.0)

    def standardize(self, x: Tensor) -> Tensor:
        """float NCHW in [0, 1] -> the network's input (training calls this on augmented images)."""
        if self.mode == "per_image":
            mean = x.mean(dim=(2, 3), keepdim=True)
            var = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True)
            return (x - mean) / torch.sqrt(var + 1e-4)
        return (x - self.mean) / self.std


class DeployableModel(nn.Module):
    """``logits = net(normalize(images))`` for uint8 ``[N, H, W, 3]`` images;
    with a domain guard, ``[logits | ood_score]``: one more column, the
    guard's score of each image (one output tensor, so every backend, engine
    and pipeline carries it without a second binding)."""

    def __init__(self, net: nn.Module, mean, std, input_normalization: str = "dataset",
                 guard: nn.Module | None = None):
        super().__init__()
        self.normalize = Normalize(mean, std, input_normalization)
        self.net = net
        self.guard = guard

    def forward(self, images: Tensor) -> Tensor:
        return self.outputs(self.normalize(images))

    def outputs(self, x: Tensor) -> Tensor:
        """The model's outputs for an already normalized float NCHW batch."""
        if self.guard is None:
            return self.net(x)
        stages = self.net.stages(x)
        return torch.cat([self.net.classify(stages[-1]).float(), self.guard(stages)], dim=1)
