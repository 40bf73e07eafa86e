"""Experiment statistics: the two-way bootstrap interval and the log-linear fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rap.experiments.stats import PUBLISHED_MIN_ADE_FIT, bootstrap_ci, fit_value, log_linear_fit


def test_bootstrap_interval_brackets_the_mean_is_seeded_and_narrows_with_more_routes():
    rng = np.random.default_rng(1)
    few = rng.normal(50, 20, size=(3, 10))
    many = rng.normal(50, 20, size=(3, 400))
    low, high = bootstrap_ci(few, 2000, seed=0)
    assert low < few.mean() < high
    assert bootstrap_ci(few, 2000, seed=0) == (low, high)  # same inputs and seed: same interval
    m_low, m_high = bootstrap_ci(many, 2000, seed=0)
    assert (m_high - m_low) < 0.5 * (high - low)
    # at least the +/- 1.96 sigma / sqrt(routes * seeds) of independent scores; resampling seeds and
    # routes both (the two-way bootstrap) is conservative, here by ~1.4x
    ratio = (m_high - m_low) / (2 * 1.96 * 20 / math.sqrt(1200))
    assert 1.0 <= ratio <= 2.0


def test_bootstrap_resamples_seeds_too():
    seeds_differ = np.array([[0.0] * 20, [100.0] * 20])  # routes agree within a seed, seeds do not
    low, high = bootstrap_ci(seeds_differ, 4000, seed=0)
    assert low == 0.0 and high == 100.0  # resampling seeds gives all-0, mixed and all-100 means
    constant = np.full((1, 1), 42.0)
    assert bootstrap_ci(constant) == (42.0, 42.0)


def test_bootstrap_refuses_bad_tables():
    with pytest.raises(ValueError, match="scores must be \\(seeds, routes\\)"):
        bootstrap_ci(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci(np.array([[1.0, np.nan]]))


def test_log_linear_fit_recovers_the_published_trend():
    x = np.array([1000, 3000, 10000, 30000])
    y = np.array([fit_value(PUBLISHED_MIN_ADE_FIT, v) for v in x])
    a, b = log_linear_fit(x, y)
    assert a == pytest.approx(-0.021) and b == pytest.approx(1.2173)
    assert log_linear_fit([5, 5], [1.0, 2.0]) is None
    with pytest.raises(ValueError, match="positive"):
        log_linear_fit([0, 10], [1.0, 2.0])
