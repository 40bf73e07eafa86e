"""Raster-to-real feature alignment, as in the RAP method.

A planner trained mostly on rasters must still drive from camera images. Two losses pull the
image features of the two domains together (both on the backbone's feature maps):

* **Spatial** (:func:`spatial_alignment_loss`): for a paired sample (the same moment and camera
  seen as a raster and as a real image), the mean squared error between the real image's feature
  map and the *stop-gradient* feature map of its raster, over every camera and patch: the real
  branch is pulled toward the raster one, not the reverse (the method's ablation found this
  direction best). Method weight 0.002.
* **Global** (:class:`DomainClassifier`, :func:`global_alignment_loss`): an MLP (hidden 512) on
  the mean-pooled front-camera features tells real from raster behind a gradient-reversal layer
  (:func:`grad_reverse`), so the backbone learns features the classifier cannot separate; BCE
  with ``pos_weight = N_raster / N_real`` (real is the positive, rarer class). Method weight
  0.001; the reversal strength follows :func:`reversal_strength` of the training progress.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["grad_reverse", "reversal_strength", "spatial_alignment_loss", "DomainClassifier", "global_alignment_loss"]


class _GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times ``-strength`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, strength: float) -> torch.Tensor:  # type: ignore[override]
        ctx.strength = float(strength)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.strength * grad, None


def grad_reverse(x: torch.Tensor, strength: float) -> torch.Tensor:
    """``x`` unchanged; in the backward pass its gradient is multiplied by ``-strength``."""
    return _GradientReversal.apply(x, strength)


def reversal_strength(progress: float) -> float:
    """λ(p) = 2 / (1 + exp(-10 p)) - 1 for the training progress p in [0, 1] (0 at the start,
    ~1 from p ≈ 0.5): the domain classifier learns first, the reversal grows in."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


def spatial_alignment_loss(real_features: torch.Tensor, raster_features: torch.Tensor) -> torch.Tensor:
    """Mean squared error between paired feature maps, the raster side detached.

    Args:
        real_features: (N, C, H, W) (or any shape) features of the real images.
        raster_features: the same shape: features of their rasters (no gradient flows into them).

    Returns:
        A scalar; 0 for empty inputs.

    Raises:
        ValueError: the shapes differ.
    """
    if real_features.shape != raster_features.shape:
        raise ValueError(f"spatial_alignment_loss: real features {tuple(real_features.shape)} and raster features {tuple(raster_features.shape)} differ")
    if real_features.numel() == 0:
        return real_features.sum() * 0.0
    return torch.mean((real_features - raster_features.detach()) ** 2)


class DomainClassifier(nn.Module):
    """An MLP telling real (logit > 0) from raster features: ``in_dim → hidden → 1``.

    Args:
        in_dim: channels of the pooled features.
        hidden: hidden width (the method: 512).
    """

    def __init__(self, in_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) → (N,) logits of "real"."""
        return self.net(pooled).squeeze(-1)


def global_alignment_loss(classifier: DomainClassifier, pooled: torch.Tensor, is_real: torch.Tensor, strength: float) -> torch.Tensor:
    """Domain-classification BCE behind a gradient-reversal layer.

    The classifier's own parameters descend the BCE (it learns to tell the domains apart); the
    features it is given receive the reversed gradient, times ``strength`` (they learn to hide
    the domain).

    Args:
        classifier: the domain classifier.
        pooled: (N, C) mean-pooled front-camera features of real and raster samples.
        is_real: (N,) bool or {0, 1}: which rows are real (or photo stand-in) images.
        strength: the reversal strength λ (:func:`reversal_strength`).

    Returns:
        The BCE (mean over rows) with ``pos_weight = N_raster / N_real``; 0 when one domain is
        missing from the batch (nothing to align).
    """
    labels = is_real.to(pooled.dtype)
    n_real = float(labels.sum())
    n_raster = float(labels.numel() - n_real)
    if n_real == 0 or n_raster == 0:
        return pooled.sum() * 0.0
    logits = classifier(grad_reverse(pooled, strength))
    pos_weight = torch.tensor(n_raster / n_real, dtype=pooled.dtype, device=pooled.device)
    return nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
