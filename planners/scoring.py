"""Scorer targets on the fly: the true NAVSIM sub-scores of every proposal the model makes,
computed by rap's own PDM scorer from each sample's stored scoring context
(:mod:`rap.augment.scoring_context`), not from a precomputed metric cache."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from planners.features import SCORE_NAMES
from rap.dataset.scoring import score_batch
from rap.trajectory import TrajectorySampling

__all__ = ["scorer_targets"]


def scorer_targets(contexts: Sequence, proposals: torch.Tensor, sampling: TrajectorySampling, wanted: torch.Tensor, names: Sequence[str] = SCORE_NAMES) -> tuple[torch.Tensor, torch.Tensor]:
    """True sub-scores of the proposals of the samples that want them.

    Args:
        contexts: one scoring context per sample (None where the shard has none).
        proposals: (B, K, T, 3) the model's proposals (detached here).
        sampling: the proposals' sampling.
        wanted: (B,) per-sample scorer-loss weight; samples with weight 0 are not scored.
        names: the scores wanted, in order (keys of :data:`rap.dataset.scoring.SCORE_KEYS`;
            default the scorer head's :data:`~planners.features.SCORE_NAMES`).

    Returns:
        (targets (B, K, len(names)) float32 in [0, 1] (zeros where not scored),
        scored (B,) bool).
    """
    b, k = proposals.shape[:2]
    poses = proposals.detach().float().cpu().numpy().astype(np.float64)
    targets = np.zeros((b, k, len(names)), dtype=np.float32)
    scored = np.zeros(b, dtype=bool)
    rows = [i for i, ctx in enumerate(contexts) if ctx is not None and float(wanted[i]) > 0 and np.all(np.isfinite(poses[i]))]
    if rows:
        # One batched rollout for every scored sample (rap.metrics.pdms.score_scenes).
        scores = score_batch([contexts[i] for i in rows], poses[rows], sampling)
        targets[rows] = np.stack([np.clip(scores[name], 0.0, 1.0) for name in names], axis=-1)
        scored[rows] = True
    device = proposals.device
    return torch.from_numpy(targets).to(device), torch.from_numpy(scored).to(device)
