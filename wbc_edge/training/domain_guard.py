"""The domain guard: how unlike the training images an image is.

Class-conditional Mahalanobis distance (Lee et al., NeurIPS 2018) on the
globally pooled features of chosen ResNet stages: one mean per class and one
shared covariance, fitted on the training images, shrunk towards a multiple of
the identity so that it stays invertible. The score of an image is its distance
to the nearest class mean, divided by the feature dimension (about 1 for
images like the training set, much more for other labs or for pictures with no
white cell). It is computed inside the graph (``DomainGuard``), so every
backend and precision reports it the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

#: The ResNet stages (1-4) whose pooled features the guard looks at.
DEFAULT_STAGES = (3, 4)
#: Shrinkage of the covariance towards tr(cov)/d * I (Ledoit-Wolf style, fixed).
SHRINKAGE = 0.1


def pooled_features(stages: Sequence[Tensor], which: Sequence[int]) -> Tensor:
    """Global average pools of the chosen stage outputs, concatenated: (N, D)."""
    return torch.cat([stages[i - 1].mean(dim=(2, 3)) for i in which], dim=1)


@dataclass
class GuardStatistics:
    """What the guard is fitted to: class means and a whitening of the shared covariance."""

    stages: tuple[int, ...]
    means: np.ndarray       # (classes, D) float64
    whitening: np.ndarray   # (D, D): x @ whitening has identity covariance

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance to the nearest class mean / D, for (N, D) features."""
        z = features.astype(np.float64) @ self.whitening
        m = self.means @ self.whitening
        d = (z * z).sum(1, keepdims=True) - 2 * z @ m.T + (m * m).sum(1)[None, :]
        return np.maximum(d.min(axis=1), 0.0) / features.shape[1]


def fit_guard(features: np.ndarray, labels: np.ndarray, num_classes: int,
              stages: Sequence[int] = DEFAULT_STAGES, shrinkage: float = SHRINKAGE) -> GuardStatistics:
    """Class means and shared, shrunk covariance of (N, D) training features."""
    features = features.astype(np.float64)
    dim = features.shape[1]
    means = np.zeros((num_classes, dim))
    centred = []
    for c in range(num_classes):
        rows = features[labels == c]
        if len(rows):
            means[c] = rows.mean(axis=0)
            centred.append(rows - means[c])
        else:
            means[c] = np.nan  # a class with no images: never the nearest mean
    centred = np.concatenate(centred)
    cov = centred.T @ centred / max(1, len(centred) - 1)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / dim * np.eye(dim)
    # cov^-1 = W W^T with W = L^-T for cov = L L^T.
    chol = np.linalg.cholesky(cov)
    whitening = np.linalg.inv(chol).T
    present = ~np.isnan(means).any(axis=1)
    return GuardStatistics(tuple(stages), means[present], whitening)


class DomainGuard(nn.Module):
    """(stage outputs) -> (N, 1) score, the graph form of :meth:`GuardStatistics.score`.

    Holds the whitening, the whitened class means (D, C) and their squared
    norms, so the graph computes ``|z|^2 - 2 z.m + |m|^2`` per class."""

    def __init__(self, stages: Sequence[int], whitening: Tensor, whitened_means: Tensor, mean_norms: Tensor):
        super().__init__()
        self.stages = tuple(int(s) for s in stages)
        self.register_buffer("whitening", whitening.float())
        self.register_buffer("whitened_means", whitened_means.float())
        self.register_buffer("mean_norms", mean_norms.float())
        self.dim = float(whitening.shape[0])

    @classmethod
    def from_statistics(cls, stats: GuardStatistics) -> DomainGuard:
        whitened_means = stats.means @ stats.whitening
        return cls(stats.stages, torch.tensor(stats.whitening), torch.tensor(whitened_means.T),
                   torch.tensor((whitened_means ** 2).sum(1)))

    def forward(self, stages: Sequence[Tensor]) -> Tensor:
        z = pooled_features(stages, self.stages).float() @ self.whitening
        d = (z * z).sum(dim=1, keepdim=True) - 2 * (z @ self.whitened_means) + self.mean_norms
        return torch.clamp(d.min(dim=1, keepdim=True).values, min=0.0) / self.dim

    def state(self) -> dict:
        """Tensors and values for a checkpoint (loads back with :meth:`from_state`)."""
        return {"stages": list(self.stages), "whitening": self.whitening.clone(),
                "whitened_means": self.whitened_means.clone(), "mean_norms": self.mean_norms.clone()}

    @classmethod
    def from_state(cls, state: dict) -> DomainGuard:
        return cls(state["stages"], state["whitening"], state["whitened_means"], state["mean_norms"])


@torch.no_grad()
def stage_features(net: nn.Module, normalize: nn.Module, images: np.ndarray, stages: Sequence[int],
                   batch_size: int = 256) -> np.ndarray:
    """Pooled features of uint8 NHWC images, as the guard sees them: (N, D)."""
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(torch.from_numpy(images[start:start + batch_size]))
        out.append(pooled_features(net.stages(x), stages).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
