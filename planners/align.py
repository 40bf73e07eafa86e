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

:func:`domain_probe` measures what the two losses are for: how well a domain classifier trained
afterwards on frozen features tells real from raster views it has not seen.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["grad_reverse", "reversal_strength", "spatial_alignment_loss", "DomainClassifier", "domain_bce", "global_alignment_loss", "AlignedPlanner", "domain_probe"]


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


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of an L2-penalised logistic regression, L-BFGS to convergence."""
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def domain_probe(real_train: torch.Tensor, raster_train: torch.Tensor, real_test: torch.Tensor, raster_test: torch.Tensor, *, l2: float = 1e-3, shrinkage: float = 0.5, iters: int = 200) -> dict[str, float]:
    """How well a linear domain classifier, fitted on frozen features, separates held-out domains.

    Fits two linear probes on the training features (rows: samples, e.g. tokens or pooled
    views; columns: channels) of the real (label 1) and raster (label 0) domains and evaluates
    them on the held-out ones. Both are invariant to the features' scale (a loss that merely
    shrinks the features does not count as alignment):

    * a logistic regression (features centred and divided by their RMS norm over the training
      rows; L2 penalty ``l2`` on the weights; L-BFGS to convergence, deterministic in float64):
      held-out ``probe_bce`` (lower: separates better; log 2 = 0.693 is chance) and balanced
      ``probe_acc``;
    * shrinkage LDA (within-domain covariance shrunk by ``shrinkage`` toward its mean
      eigenvalue): held-out ``dprime`` = (mean real - mean raster) / pooled std of the
      projections (the sensitivity index: 0 indistinguishable, negative when the fitted
      direction is reversed on held-out data) and ``auc``. LDA whitens the features, so it also
      finds a domain difference hidden in low-variance directions, which the penalised logistic
      probe (bounded weights on RMS-normalised features) does not.

    Returns:
        ``{"probe_bce", "probe_acc", "dprime", "auc"}``.

    Raises:
        ValueError: a domain has fewer than two rows in a split, or the column counts differ.
    """
    with torch.no_grad():
        parts = [t.detach().double().reshape(t.shape[0], -1) for t in (real_train, raster_train, real_test, raster_test)]
    if len({p.shape[1] for p in parts}) != 1 or min(p.shape[0] for p in parts) < 2:
        raise ValueError(f"domain_probe: need >= 2 rows per domain and split with equal columns; got {[tuple(p.shape) for p in parts]}")
    a, b, c, d = parts
    x_train, x_test = torch.cat([a, b]), torch.cat([c, d])
    y_train = torch.cat([a.new_ones(len(a)), b.new_zeros(len(b))])
    y_test = torch.cat([c.new_ones(len(c)), d.new_zeros(len(d))])
    mean = x_train.mean(0)
    scale = ((x_train - mean) ** 2).sum(1).mean().sqrt().clamp_min(1e-300)
    w, bias = _fit_logistic((x_train - mean) / scale, y_train, l2, iters)
    with torch.no_grad():
        logits = (x_test - mean) / scale @ w + bias
        bce = nn.functional.binary_cross_entropy_with_logits(logits, y_test)
        hit = ((logits > 0).double() == y_test).double()
        acc = 0.5 * hit[: len(c)].mean() + 0.5 * hit[len(c) :].mean()
        dim = a.shape[1]
        within = 0.5 * (torch.cov(a.T).reshape(dim, dim) + torch.cov(b.T).reshape(dim, dim))
        within = (1 - shrinkage) * within + shrinkage * torch.trace(within) / dim * torch.eye(dim, dtype=within.dtype)
        direction = torch.linalg.lstsq(within, (a.mean(0) - b.mean(0))[:, None]).solution[:, 0]
        p, q = c @ direction, d @ direction
        spread, gap = float((0.5 * (p.var() + q.var())).sqrt()), float(p.mean() - q.mean())
        dprime = gap / spread if spread > 0 else (math.copysign(math.inf, gap) if gap else 0.0)
        auc = (p[:, None] > q[None, :]).double().mean() + 0.5 * (p[:, None] == q[None, :]).double().mean()
    return {"probe_bce": float(bce), "probe_acc": float(acc), "dprime": dprime, "auc": float(auc)}
