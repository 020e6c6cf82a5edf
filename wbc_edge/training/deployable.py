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


class ClassActivationMap(nn.Module):
    """CAM (Zhou et al. 2016): the classifier's weights applied at each
    position of the last stage's features, ``cam[c, y, x] = fc.weight[c] .
    features[:, y, x]`` (a 1x1 convolution). For a global-average-pooled
    network its mean over positions plus ``fc.bias[c]`` is the logit, and it
    equals Grad-CAM up to scale, with no gradients, so every backend runs it."""

    def forward(self, features: Tensor, fc: nn.Linear) -> Tensor:
        weight = fc.weight.reshape(fc.out_features, fc.in_features, 1, 1)
        return nn.functional.conv2d(features, weight).flatten(1).float()


class DeployableModel(nn.Module):
    """``logits = net(normalize(images))`` for uint8 ``[N, H, W, 3]`` images.

    Extra outputs are more columns of the same row, in this order (one output
    tensor, so every backend, engine and pipeline carries them without a
    second binding; ``ModelMetadata.output_columns`` names them): with a
    domain guard, the guard's ``ood_score``; with ``cam``, each class's
    activation map over the last stage (``classes x h x w`` values)."""

    def __init__(self, net: nn.Module, mean, std, input_normalization: str = "dataset",
                 guard: nn.Module | None = None, cam: bool = False):
        super().__init__()
        self.normalize = Normalize(mean, std, input_normalization)
        self.net = net
        self.guard = guard
        self.cam = ClassActivationMap() if cam else None

    def forward(self, images: Tensor) -> Tensor:
        return self.outputs(self.normalize(images))

    def outputs(self, x: Tensor) -> Tensor:
        """The model's outputs for an already normalized float NCHW batch."""
        if self.guard is None and self.cam is None:
            return self.net(x)
        stages = self.net.stages(x)
        outputs = [self.net.classify(stages[-1]).float()]
        if self.guard is not None:
            outputs.append(self.guard(stages))
        if self.cam is not None:
            outputs.append(self.cam(stages[-1], self.net.fc))
        return torch.cat(outputs, dim=1)

    def cam_metadata(self, input_size) -> dict | None:
        """``ModelMetadata.cam`` for ``input_size`` (H, W) inputs, or None
        without maps: ResNet-18 halves the size five times (stem convolution,
        max pool, layer2..layer4), rounding up."""
        if self.cam is None:
            return None
        h, w = input_size
        for _ in range(5):
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        return {"shape": [self.net.fc.out_features, h, w], "layer": "layer4"}
