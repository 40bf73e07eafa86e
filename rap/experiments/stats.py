"""Statistics of experiment tables: bootstrap confidence intervals over routes and seeds, and the
log-linear fit of a data-scaling curve."""

from __future__ import annotations

import math

import numpy as np

PUBLISHED_MIN_ADE_FIT = (-0.021, 1.2173)  # the method's minADE = -0.021 ln x + 1.2173 (x: cross-agent samples)


def bootstrap_ci(scores: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores`` (seeds x routes), resampling seeds
    and routes independently (a two-way bootstrap: the same resampled routes for every resampled
    seed, as every seed drives the same routes).

    Args:
        scores: (S, R) one score per training seed and route; S = 1 resamples routes only.
        resamples: bootstrap resamples.
        seed: the resampling generator's seed (the same inputs and seed give the same interval).
        level: coverage of the interval.

    Returns:
        (low, high); both equal the mean when there is a single route and seed.

    Raises:
        ValueError: an empty or non-2-D ``scores``, or non-finite scores.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"bootstrap_ci: scores must be (seeds, routes) with at least one of each, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("bootstrap_ci: scores must be finite")
    rng = np.random.default_rng(seed)
    n_seeds, n_routes = s.shape
    seed_idx = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    route_idx = rng.integers(0, n_routes, size=(resamples, n_routes))
    # mean over the resampled seeds of the mean over the resampled routes
    route_means = np.stack([s[:, r].mean(axis=1) for r in route_idx])  # (B, S): each seed's mean on resample b's routes
    means = np.take_along_axis(route_means, seed_idx, axis=1).mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def log_linear_fit(x, y) -> tuple[float, float] | None:
    """Least-squares ``y = a ln x + b``; ``(a, b)``, or None with fewer than two distinct x.

    Raises:
        ValueError: x not positive, or x and y of different lengths.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"log_linear_fit: x and y differ in length ({x.shape} vs {y.shape})")
    if (x <= 0).any():
        raise ValueError("log_linear_fit: x must be positive (a log scale)")
    if len(np.unique(x)) < 2:
        return None
    a, b = np.polyfit(np.log(x), y, 1)
    return float(a), float(b)


def fit_value(fit: tuple[float, float], x: float) -> float:
    """``a ln x + b``."""
    return fit[0] * math.log(x) + fit[1]
