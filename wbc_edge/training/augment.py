"""Training-only augmentation, applied on top of the inference preprocessing.

What differs between labs is what is varied here (Tellez et al. 2019, "Quantifying
the effects of data augmentation and stain color normalization in convolutional
neural networks for computational pathology"):

- stain: jitter in haematoxylin-eosin-DAB optical density space (HED), hue,
  saturation, brightness, contrast, gamma, per-channel gain, some grayscale;
- geometry: a cell has no "up" (flips, 90-degree turns and any rotation, with
  reflected or black corners as a rotated crop has), and its scale and place
  vary around what cell centring gives;
- optics and files: blur (focus), sensor noise, JPEG compression.

Everything is driven by an explicit generator so that a run is reproducible and
resumable; everything but JPEG runs batched on tensors.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AugmentConfig:
    dihedral: bool = True          # flips and 90-degree rotations
    max_rotation_deg: float = 180.0
    black_corners: float = 0.3     # share of rotated images with black (not reflected) corners
    min_scale: float = 0.7         # cell scale factor range (log-uniform)
    max_scale: float = 1.5
    max_shift: float = 0.1         # translation, as a fraction of the size
    brightness: float = 0.25
    contrast: float = 0.3
    saturation: float = 0.35
    hue: float = 0.08              # fraction of a full turn
    stain: float = 0.08            # independent gain per RGB channel
    hed: float = 0.05              # HED optical density: scale 1 +- hed, shift +- hed
    gamma: float = 0.3             # gamma = exp(U(-gamma, gamma))
    grayscale: float = 0.05        # share of images made gray
    blur: float = 0.3              # share of images blurred, sigma up to max_blur pixels
    max_blur: float = 1.5
    noise: float = 0.03            # Gaussian noise std up to this (on the [0, 1] scale)
    jpeg: float = 0.3              # share of images JPEG-compressed, quality 30-90

    @classmethod
    def legacy(cls) -> AugmentConfig:
        """The augmentation of the first shipped model (for ablations)."""
        return cls(max_rotation_deg=15.0, black_corners=0.0, min_scale=1 / 1.1, max_scale=1.1, max_shift=0.05,
                   brightness=0.15, contrast=0.15, saturation=0.15, hue=0.03, stain=0.05, hed=0.0, gamma=0.0,
                   grayscale=0.0, blur=0.0, noise=0.0, jpeg=0.0)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _gray(x: Tensor) -> Tensor:
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def jpeg(images: Tensor, share: float, gen: torch.Generator) -> Tensor:
    """Re-encodes a random share of uint8 NHWC images as JPEG (quality 30-90)."""
    from PIL import Image

    pick = torch.rand(len(images), generator=gen) < share
    quality = torch.randint(30, 91, (len(images),), generator=gen)
    if not pick.any():
        return images
    out = images.clone()
    for i in pick.nonzero().flatten().tolist():
        buffer = io.BytesIO()
        Image.fromarray(images[i].numpy()).save(buffer, format="JPEG", quality=int(quality[i]))
        out[i] = torch.from_numpy(np.array(Image.open(buffer).convert("RGB")))
    return out


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
    """Random rotation, scale and shift; corners reflected, or black for a share."""
    n = x.shape[0]
    angle = _uniform(n, -cfg.max_rotation_deg, cfg.max_rotation_deg, gen) * math.pi / 180
    scale = torch.exp(_uniform(n, math.log(cfg.min_scale), math.log(cfg.max_scale), gen))
    shift = _uniform(2 * n, -2 * cfg.max_shift, 2 * cfg.max_shift, gen).view(n, 2)
    black = torch.rand(n, generator=gen) < cfg.black_corners
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if black.any():
        out[black] = F.grid_sample(x[black], grid[black], mode="bilinear", padding_mode="zeros",
                                   align_corners=False)
    return out


# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB), as in
# scikit-image's rgb2hed; the inverse maps optical densities back to RGB.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def hed_jitter(x: Tensor, amount: float, gen: torch.Generator) -> Tensor:
    """Tellez et al.'s HED jitter: each stain's optical density scaled by
    1 +- amount and shifted by +- amount, per image."""
    n = x.shape[0]
    od = -torch.log(x.clamp(min=1 / 255))                      # optical density, (n, 3, h, w)
    hed = torch.einsum("ij,nihw->njhw", _HED_FROM_RGB, od)
    scale = _uniform(3 * n, 1 - amount, 1 + amount, gen).view(n, 3, 1, 1)
    shift = _uniform(3 * n, -amount, amount, gen).view(n, 3, 1, 1)
    od = torch.einsum("ij,nihw->njhw", _RGB_FROM_HED, hed * scale + shift)
    return torch.exp(-od).clamp(0.0, 1.0)


def colour(x: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """HED, brightness, contrast, saturation, hue, gamma, stain gain, grayscale."""
    n = x.shape[0]

    def factor(amount: float) -> Tensor:
        return _uniform(n, 1 - amount, 1 + amount, gen).view(n, 1, 1, 1)

    if cfg.hed > 0:
        x = hed_jitter(x, cfg.hed, gen)
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
    x = (x * gain).clamp(0.0, 1.0)
    if cfg.gamma > 0:
        x = x.pow(torch.exp(_uniform(n, -cfg.gamma, cfg.gamma, gen)).view(n, 1, 1, 1))
    if cfg.grayscale > 0:
        pick = (torch.rand(n, generator=gen) < cfg.grayscale).view(n, 1, 1, 1)
        x = torch.where(pick, _gray(x).expand_as(x), x)
    return x


def blur(x: Tensor, share: float, max_sigma: float, gen: torch.Generator) -> Tensor:
    """Gaussian blur of a random share of the images, sigma uniform up to max_sigma."""
    n = x.shape[0]
    pick = torch.rand(n, generator=gen) < share
    sigma = _uniform(n, 0.3, max_sigma, gen)
    if not pick.any():
        return x
    radius = math.ceil(2 * max_sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    out = x.clone()
    for i in pick.nonzero().flatten().tolist():
        k = torch.exp(-0.5 * (taps / sigma[i]) ** 2)
        k = (k / k.sum()).to(x.dtype)
        img = F.pad(x[i:i + 1], (radius, radius, radius, radius), mode="reflect")
        img = F.conv2d(img, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        out[i:i + 1] = F.conv2d(img, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return out


def augment(images: Tensor, cfg: AugmentConfig, gen: torch.Generator) -> Tensor:
    """uint8 NHWC images -> augmented float NCHW in [0, 1]."""
    if cfg.jpeg > 0:
        images = jpeg(images, cfg.jpeg, gen)
    x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    if cfg.dihedral:
        x = dihedral(x, gen)
    if cfg.max_rotation_deg > 0 or cfg.max_scale > 1 or cfg.min_scale < 1 or cfg.max_shift > 0:
        x = affine(x, cfg, gen)
    x = colour(x, cfg, gen)
    if cfg.blur > 0:
        x = blur(x, cfg.blur, cfg.max_blur, gen)
    if cfg.noise > 0:
        x = x + torch.randn(x.shape, generator=gen) * _uniform(x.shape[0], 0, cfg.noise, gen).view(-1, 1, 1, 1)
    return x.clamp_(0.0, 1.0)
