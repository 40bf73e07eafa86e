"""Training losses: winner-takes-all L1 on the proposals, BCE of the scorer against the true
sub-scores of each proposal (from :mod:`planners.scoring`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["trajectory_errors", "wta_l1", "scorer_bce"]


def trajectory_errors(proposals: torch.Tensor, target: torch.Tensor, heading_weight: float = 1.0) -> torch.Tensor:
    """(B, K) mean over poses of |dx| + |dy| + heading_weight * |wrapped dheading|."""
    diff = proposals - target[:, None]
    dh = torch.remainder(diff[..., 2] + math.pi, 2 * math.pi) - math.pi
    return (diff[..., 0].abs() + diff[..., 1].abs() + heading_weight * dh.abs()).mean(dim=-1)


def wta_l1(proposals: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, heading_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Winner-takes-all L1: each sample's closest proposal is pulled to the target.

    Returns:
        (loss: sum of weight x error of the best proposal over the batch, divided by the batch
        size; best: (B,) index of the best proposal).
    """
    errors = trajectory_errors(proposals, target, heading_weight)
    best_err, best = errors.min(dim=1)
    return (weights * best_err).sum() / proposals.shape[0], best


def scorer_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the predicted sub-scores (B, K, S) against true ones in [0, 1],
    averaged over proposals and scores, weighted per sample, divided by the batch size."""
    per_sample = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").mean(dim=(1, 2))
    return (weights * per_sample).sum() / logits.shape[0]
