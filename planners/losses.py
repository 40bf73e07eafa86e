"""Training losses: winner-takes-all L1 on the proposals, BCE of the scorer against the true
sub-scores of each proposal (from :mod:`planners.scoring`), and the imitation head's
cross-entropy against a soft target that favours the proposals closest to the target
(Hydra-MDP's imitation score), and a listwise ranking loss that teaches the predicted PDMS which
of a sample's proposals score best (what selection needs)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["trajectory_errors", "wta_l1", "scorer_bce", "imitation_targets", "imitation_ce", "ranking_ce"]


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


def imitation_targets(proposals: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, K) soft imitation target: softmax over the proposals of -d^2 / temperature, d^2 the
    mean over poses of the squared x-y distance [m^2] of a proposal to the target (no gradient).

    The proposal closest to the target gets the largest share; a small ``temperature`` [m^2]
    makes the target one-hot on it (the WTA winner in L2)."""
    with torch.no_grad():
        d2 = (proposals[..., :2].float() - target[:, None, :, :2].float()).pow(2).sum(dim=-1).mean(dim=-1)
        return torch.softmax(-d2 / temperature, dim=1)


def imitation_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the imitation logits (B, K) (softmax over the K proposals) against soft
    targets (B, K), weighted per sample, divided by the batch size."""
    per_sample = -(targets * torch.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return (weights * per_sample).sum() / logits.shape[0]


def ranking_ce(logits: torch.Tensor, true_scores: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """Listwise ranking loss: cross-entropy of softmax over the K proposals of ``logits`` (B, K)
    against softmax(true_scores / temperature) (B, K), weighted per sample (weight 0: not
    scored), divided by the batch size. Only the order within a sample matters to it."""
    target = torch.softmax(true_scores.float() / temperature, dim=1)
    return imitation_ce(logits, target, weights)
