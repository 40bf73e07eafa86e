"""Tests for rap/metrics/comfort.py."""

from __future__ import annotations

import numpy as np
import pytest

from rap.metrics.comfort import (
    V1_FILTERS,
    V2_FILTERS,
    ComfortIndex,
    comfort_checks,
    comfort_signals,
    extended_comfort,
    is_comfortable,
    savgol_filter,
)
from rap.sim import StateIndex


@pytest.mark.parametrize("n, window, order", [(41, 5, 2), (41, 15, 2), (56, 56, 2), (41, 41, 2), (36, 5, 3)])
def test_savgol_is_exact_on_polynomials(n, window, order):
    t = np.arange(n) * 0.1
    x = 1.0 + 2.0 * t - 0.7 * t**2 + (0.3 * t**3 if order >= 3 else 0.0)
    dx = 2.0 - 1.4 * t + (0.9 * t**2 if order >= 3 else 0.0)
    np.testing.assert_allclose(savgol_filter(x, window, order), x, atol=1e-9)
    np.testing.assert_allclose(savgol_filter(x, window, order, deriv=1, delta=0.1), dx, atol=1e-8)
    np.testing.assert_allclose(savgol_filter(np.stack([x, 2 * x]), window, order)[1], 2 * x, atol=1e-9)


def test_savgol_even_window_evaluates_half_a_sample_late_inside():
    # scipy's convention for even windows (which NAVSIM's window 8 inherits): interior outputs
    # are the local fit at i + 0.5; the edges come from the end fits, evaluated in place.
    t = np.arange(41) * 0.1
    poly = lambda u: 1.0 + 2.0 * u - 0.7 * u**2  # noqa: E731
    out = savgol_filter(poly(t), 8, 2)
    np.testing.assert_allclose(out[4:-4], poly(t[4:-4] + 0.05), atol=1e-9)
    np.testing.assert_allclose(out[:4], poly(t[:4]), atol=1e-9)
    np.testing.assert_allclose(out[-4:], poly(t[-4:]), atol=1e-9)


def test_savgol_matches_scipy_when_available():
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(0)
    for n, w, p, d in [(41, 8, 2, 0), (41, 15, 2, 1), (56, 56, 2, 1), (41, 5, 3, 2), (36, 8, 2, 0), (9, 4, 1, 1)]:
        x = rng.normal(size=(3, n))
        np.testing.assert_allclose(savgol_filter(x, w, p, d, 0.1), signal.savgol_filter(x, w, p, deriv=d, delta=0.1), atol=1e-9)


def _states(x: np.ndarray, y: np.ndarray, dt: float = 0.1) -> np.ndarray:
    """(1, T, 11) states from a path sampled every dt (speeds and accelerations by differences)."""
    s = np.zeros((1, x.size, 11))
    h = np.unwrap(np.arctan2(np.gradient(y), np.gradient(x)))
    v = np.hypot(np.gradient(x, dt), np.gradient(y, dt))
    s[0, :, StateIndex.X], s[0, :, StateIndex.Y], s[0, :, StateIndex.HEADING] = x, y, h
    s[0, :, StateIndex.VELOCITY_X] = v
    s[0, :, StateIndex.ACCELERATION_X] = np.gradient(v, dt)
    s[0, :, StateIndex.ANGULAR_VELOCITY] = np.gradient(h, dt)
    return s


def test_smooth_drive_is_comfortable_and_zigzag_is_not():
    t = np.arange(41) * 0.1
    smooth = _states(10.0 * t, 0.0 * t)
    zigzag = _states(10.0 * t, 1.5 * np.sin(2 * np.pi * t))
    for filters in (V1_FILTERS, V2_FILTERS):
        assert is_comfortable(smooth, 0.1, filters)[0] == 1.0
        checks = comfort_checks(zigzag, 0.1, filters)[0]
        assert not checks[ComfortIndex.YAW_RATE] and not checks[ComfortIndex.YAW_ACCEL]
        assert is_comfortable(zigzag, 0.1, filters)[0] == 0.0
    hard_brake = _states(np.cumsum(np.maximum(10.0 - 6.0 * t, 0.0)) * 0.1, 0.0 * t)
    assert not comfort_checks(hard_brake, 0.1, V1_FILTERS)[0, ComfortIndex.LON_ACCEL]


def test_comfort_signal_shapes_and_center_reference():
    s = np.zeros((3, 56, 11))
    s[..., StateIndex.ANGULAR_VELOCITY] = 0.5
    sig1 = comfort_signals(s, 0.1, V1_FILTERS)
    sig2 = comfort_signals(s, 0.1, V2_FILTERS)
    assert sig1.shape == (3, 6, 56)
    assert np.allclose(sig1[:, ComfortIndex.LON_ACCEL], 0.0)
    # v2 reads the acceleration at the box centre: + d * w^2 (nuPlan's rigid-body shift).
    np.testing.assert_allclose(sig2[:, ComfortIndex.LON_ACCEL], 1.461 * 0.25, atol=1e-8)


def test_extended_comfort_same_plan_passes_and_different_fails():
    t = np.arange(41) * 0.1
    a = _states(10.0 * t, 0.0 * t)[0]
    later = _states(10.0 * (t + 0.5), 0.0 * t)  # the same motion, planned 0.5 s later
    assert extended_comfort(later, a, 5, 0.1)[0] == 1.0
    turning = _states(10.0 * (t + 0.5), 1.0 * (t + 0.5) ** 2)
    braking = _states(np.cumsum(np.maximum(10.0 - 3.0 * t, 0.0)) * 0.1 + 5.0, 0.0 * t)
    np.testing.assert_array_equal(extended_comfort(np.concatenate([later, turning, braking]), a, 5, 0.1), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        extended_comfort(later, a, 0, 0.1)


def test_comfort_of_a_batch_equals_each_group_alone():
    """Comfort of many scenes' rollouts in one pass is bit-identical to each group's own call
    (each signal is filtered on its own, so a row's bits do not depend on its batch)."""
    rng = np.random.default_rng(8)
    sizes = [3, 66, 1, 20]
    states = rng.normal(0.0, 1.0, (sum(sizes), 41, 11)).cumsum(axis=1) * 0.1
    bounds = np.cumsum([0] + sizes)
    for filters in (V1_FILTERS, V2_FILTERS):
        together_signals = comfort_signals(states, 0.1, filters)
        together = is_comfortable(states, 0.1, filters)
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            assert np.array_equal(together_signals[lo:hi], comfort_signals(states[lo:hi], 0.1, filters))
            assert np.array_equal(together[lo:hi], is_comfortable(states[lo:hi], 0.1, filters))
    previous = rng.normal(0.0, 1.0, (len(sizes), 41, 11)).cumsum(axis=1) * 0.1
    ec = extended_comfort(states, previous, 5, 0.1, groups=sizes)
    for g, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        assert np.array_equal(ec[lo:hi], extended_comfort(states[lo:hi], previous[g], 5, 0.1))
    with pytest.raises(ValueError, match="one plan per group"):
        extended_comfort(states, previous[:2], 5, 0.1, groups=sizes)


@pytest.mark.parametrize("filters, steps", [(V1_FILTERS, 41), (V2_FILTERS, 41), (V2_FILTERS, 61), (V1_FILTERS, 6)])
def test_compiled_checks_equal_the_bounds_applied_to_the_signals(filters, steps):
    """comfort_checks (one compiled pass per row) decides exactly what comparing
    comfort_signals (the array code) with the bounds decides, near the bounds included."""
    from rap.metrics.comfort import ComfortBounds

    rng = np.random.default_rng(7)
    k = 300
    states = np.zeros((k, steps, 11))
    t = np.arange(steps) * 0.1
    scale = rng.uniform(0.0, 3.0, (k, 1))  # from calm to far outside the bounds
    states[..., StateIndex.ACCELERATION_X] = scale * np.sin(rng.uniform(0.5, 6.0, (k, 1)) * t) + rng.normal(0, 0.3, (k, steps)) * scale
    states[..., StateIndex.ACCELERATION_Y] = scale * rng.normal(0, 1.0, (k, steps))
    states[..., StateIndex.HEADING] = np.cumsum(rng.normal(0, 0.004, (k, steps)) * scale, axis=1) + rng.uniform(-7, 7, (k, 1))
    states[..., StateIndex.ANGULAR_VELOCITY] = rng.normal(0, 0.1, (k, steps))
    states[..., StateIndex.ANGULAR_ACCELERATION] = rng.normal(0, 0.3, (k, steps))
    b = ComfortBounds()
    sig = comfort_signals(states, 0.1, filters)
    lo = np.array([b.min_lon_accel, -b.max_abs_lat_accel, -b.max_abs_jerk, -b.max_abs_lon_jerk, -b.max_abs_yaw_accel, -b.max_abs_yaw_rate])
    hi = -lo
    hi[0] = b.max_lon_accel
    expected = ((sig > lo[None, :, None]) & (sig < hi[None, :, None])).all(axis=-1)
    got = comfort_checks(states, 0.1, filters)
    assert got.shape == (k, 6) and got.dtype == bool
    np.testing.assert_array_equal(got, expected)
    assert 0.2 < expected.all(axis=1).mean() < 0.9  # both outcomes are exercised
    # A signal exactly on a bound fails (strict bounds), as in the array code.
    edge = states[:1].copy()
    edge[..., StateIndex.ACCELERATION_X] = b.max_lon_accel
    edge[..., StateIndex.ACCELERATION_Y] = 0.0
    edge[..., StateIndex.HEADING] = 0.0
    edge[..., StateIndex.ANGULAR_VELOCITY] = edge[..., StateIndex.ANGULAR_ACCELERATION] = 0.0
    assert not comfort_checks(edge, 0.1, V1_FILTERS)[0, ComfortIndex.LON_ACCEL]
