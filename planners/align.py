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

__all__ = ["grad_reverse", "reversal_strength", "spatial_alignment_loss", "DomainClassifier", "domain_bce", "global_alignment_loss", "AlignedPlanner"]


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
    return domain_bce(classifier(grad_reverse(pooled, strength)), is_real)


def domain_bce(logits: torch.Tensor, is_real: torch.Tensor) -> torch.Tensor:
    """BCE of domain logits (N,) against ``is_real`` (N,) with ``pos_weight = N_raster / N_real``
    (mean over rows); 0 when one domain is missing (still connected to ``logits``, so every
    classifier parameter takes part in the backward pass, as DDP requires)."""
    labels = is_real.to(logits.dtype)
    n_real = float(labels.sum())
    n_raster = float(labels.numel() - n_real)
    if n_real == 0 or n_raster == 0:
        return logits.sum() * 0.0 + 0.0
    pos_weight = torch.tensor(n_raster / n_real, dtype=logits.dtype, device=logits.device)
    return nn.functional.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)


class AlignedPlanner(nn.Module):
    """A planner and its domain classifier as one module (what DDP wraps when
    ``align.global_weight > 0``).

    ``forward(batch)`` returns the planner's outputs plus ``"domain_logits"`` (B + P,) — the
    classifier on the mean-pooled front-camera features of the batch's B views and of the P
    paired rasters, behind the gradient reversal of strength :attr:`strength` — and
    ``"domain_is_real"`` (B + P,): the rows ``batch["paired_rows"]`` hold real (or photo) views,
    every other row a raster.

    Args:
        planner: an image planner (its outputs carry ``image_features`` / ``raster_features``).
        classifier: the domain classifier.
        front_camera: index of the camera the classifier reads.
    """

    def __init__(self, planner: nn.Module, classifier: DomainClassifier, front_camera: int) -> None:
        super().__init__()
        self.planner, self.classifier, self.front_camera = planner, classifier, front_camera
        self.strength = 0.0  # set by the training loop each step: reversal_strength(progress)

    def forward(self, batch: dict) -> dict:
        out = self.planner(batch)
        feats = out["image_features"]
        pooled = [feats[:, self.front_camera].mean(dim=1)]
        is_real = torch.zeros(feats.shape[0], dtype=torch.bool, device=feats.device)
        is_real[batch["paired_rows"].to(feats.device)] = True
        if out.get("raster_features") is not None:
            pooled.append(out["raster_features"][:, self.front_camera].mean(dim=1))
            is_real = torch.cat([is_real, is_real.new_zeros(out["raster_features"].shape[0])])
        out["domain_logits"] = self.classifier(grad_reverse(torch.cat(pooled).float(), self.strength))
        out["domain_is_real"] = is_real
        return out
