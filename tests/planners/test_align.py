"""Raster-to-real alignment losses: gradient reversal, the schedule, the spatial loss's direction,
the domain loss's class weighting."""

from __future__ import annotations

import math

import pytest
import torch

from planners.align import (
    DomainClassifier,
    domain_probe,
    global_alignment_loss,
    grad_reverse,
    reversal_strength,
    spatial_alignment_loss,
)


def test_reversal_is_identity_forward_and_negated_scaled_gradient_backward():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    (y * torch.arange(12.0).view(4, 3)).sum().backward()
    assert torch.allclose(x.grad, -0.7 * torch.arange(12.0).view(4, 3))


def test_reversal_strength_follows_the_schedule():
    assert reversal_strength(0.0) == 0.0
    assert reversal_strength(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert reversal_strength(1.0) == pytest.approx(0.99991, abs=1e-5)
    assert reversal_strength(-1.0) == 0.0 and reversal_strength(2.0) == reversal_strength(1.0)
    values = [reversal_strength(p / 10) for p in range(11)]
    assert values == sorted(values)


def test_spatial_loss_moves_only_the_real_branch():
    real = torch.randn(2, 8, 4, 4, requires_grad=True)
    raster = torch.randn(2, 8, 4, 4, requires_grad=True)
    loss = spatial_alignment_loss(real, raster)
    assert loss.item() == pytest.approx(((real - raster) ** 2).mean().item())
    loss.backward()
    assert raster.grad is None and real.grad is not None and real.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"real features \(2, 8, 4, 4\) and raster features \(2, 8, 4, 2\) differ"):
        spatial_alignment_loss(real, raster[..., :2])


def test_global_loss_weights_the_rarer_real_class_and_is_zero_without_both_domains():
    torch.manual_seed(0)
    clf = DomainClassifier(6, hidden=16)
    pooled = torch.randn(5, 6)
    is_real = torch.tensor([1, 0, 0, 0, 0])
    logits = clf(pooled)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, is_real.float(), pos_weight=torch.tensor(4.0))
    assert global_alignment_loss(clf, pooled, is_real, 1.0).item() == pytest.approx(expected.item())
    assert global_alignment_loss(clf, pooled, torch.zeros(5), 1.0).item() == 0.0


def test_domain_probe_scores_held_out_separability_whatever_the_features_scale():
    g = torch.Generator().manual_seed(0)

    def views(n: int, shift: float) -> torch.Tensor:
        return torch.randn(n, 8, generator=g) + shift

    apart = [views(100, 3.0), views(100, 0.0), views(50, 3.0), views(50, 0.0)]
    mixed = [views(100, 0.0), views(100, 0.0), views(50, 0.0), views(50, 0.0)]
    sep, same = domain_probe(*apart), domain_probe(*mixed)
    assert sep["probe_bce"] < 0.1 and sep["probe_acc"] == 1.0 and sep["auc"] == 1.0 and sep["dprime"] > 5
    assert same["probe_bce"] > 0.6 and 0.3 < same["probe_acc"] < 0.7 and abs(same["dprime"]) < 1
    shrunk = domain_probe(*(t * 1e-3 for t in apart))  # shrinking the features is not aligning them
    for key in sep:
        assert shrunk[key] == pytest.approx(sep[key], rel=1e-3, abs=1e-4), key
    with pytest.raises(ValueError, match="need >= 2 rows per domain"):
        domain_probe(apart[0], apart[1][:1], apart[2], apart[3])
