"""Training-only augmentation, applied on top of the inference preprocessing.

A cell has no "up": flips and 90-degree rotations are free. Small rotations and
scale changes cover framing; colour jitter (brightness, contrast, saturation,
hue, per-channel stain gain) covers the stain differences between labs.
Everything runs batched on tensors, driven by an explicit generator so that a
run is reproducible and resumable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    dihedral: bool = True          # flips and 90-degree rotations
    max_rotation_deg: float = 15.0
    max_scale: float = 1.1         # zoom in or out by up to this factor
    max_shift: float = 0.05        # translation, as a fraction of the size
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.03              # fraction of a full turn
    stain: float = 0.05            # independent gain per RGB channel


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def dihedral(x: Tensor, gen: torch.Generator) -> Tensor:
    """Each image rotated by a random multiple of 90 degrees, and maybe mirrored."""
    n, _, h, w = x.shape
    turns = torch.randint(0, 4 if h == w else 2, (n,), generator=gen) * (1 if h == w else 2)
    mirror = torch.rand(n, generator=gen) < 0.5
    out = x.clone()
    for k in range(4):
        for flip in (False, True):
            idx = ((turns == k) & (mirror == flip)).nonzero().flatten()
            if len(idx) == 0:
                continue
            part = torch.rot90(x[idx], k, dims=(2, 3))
            out[idx] = part.flip(3) if flip else part
    return out


def affine(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Small random rotation, scale and shift (reflection at the borders)."""
    n = x.shape[0]
    angle = _uniform(n, -cfg.max_rotation_deg, cfg.max_rotation_deg, gen) * math.pi / 180
    scale = torch.exp(_uniform(n, -math.log(cfg.max_scale), math.log(cfg.max_scale), gen))
    shift = _uniform(2 * n, -2 * cfg.max_shift, 2 * cfg.max_shift, gen).view(n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """Brightness, contrast, saturation, hue and per-channel stain jitter."""
    n = x.shape[0]

    def factor(amount: float) -> Tensor:
        return _uniform(n, 1 - amount, 1 + amount, gen).view(n, 1, 1, 1)

    x = x * factor(cfg.brightness)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor(cfg.contrast) + mean
    gray = _gray(x)
    x = (x - gray) * factor(cfg.saturation) + gray
    if cfg.hue > 0:
        # Rotate the chroma plane of YIQ by a random angle.
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        angle = _uniform(n, -cfg.hue, cfg.hue, gen) * 2 * math.pi
        rot = torch.zeros(n, 3, 3)
        rot[:, 0, 0] = 1
        rot[:, 1, 1], rot[:, 1, 2] = torch.cos(angle), -torch.sin(angle)
        rot[:, 2, 1], rot[:, 2, 2] = torch.sin(angle), torch.cos(angle)
        m = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # (n, 3, 3)
        x = torch.einsum("nij,njhw->nihw", m, x)
    gain = _uniform(3 * n, 1 - cfg.stain, 1 + cfg.stain, gen).view(n, 3, 1, 1)
    return (x * gain).clamp_(0.0, 1.0)


def augment(images: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """uint8 NHWC images -> augmented float NCHW in [0, 1]."""
    x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    if cfg.dihedral:
        x = dihedral(x, gen)
    if cfg.max_rotation_deg > 0 or cfg.max_scale > 1 or cfg.max_shift > 0:
        x = affine(x, cfg, gen)
    return colour(x, cfg, gen)
