"""Comfort metrics of NAVSIM's PDM score: per-trajectory comfort (PDMS v1 ``C``, EPDMS v2 ``HC``)
and two-frame extended comfort (EPDMS ``EC``), as pure functions over batched state arrays.

Signals are smoothed / differentiated with a Savitzky-Golay filter. :func:`savgol_filter`
re-implements ``scipy.signal.savgol_filter(..., mode="interp")`` in numpy, including scipy's
handling of even windows (the interior fit is evaluated half a sample late) and of windows as long
as the signal (one polynomial fitted to the whole signal). Each extracted signal is rounded to 8
decimals, as nuPlan does. Bounds are strict: a value must lie strictly inside them at every step.

Filter settings (read from NAVSIM's ``pdm_comfort_metrics.py``; nuPlan's ``ego_is_comfortable``
metrics are the origin):

=====================  ======================================  ==================================
signal                 PDMS v1 (:data:`V1_FILTERS`)            EPDMS v2 (:data:`V2_FILTERS`)
=====================  ======================================  ==================================
lon / lat accel        window = whole signal, order 2          window 8, order 2, at the box
                       (rear-axle accelerations)               centre (nuPlan's rigid-body shift)
jerk, lon jerk         accel smoothed (window 8, order 2),     same smoothing, then derivative
                       then derivative, window = whole signal  window 15, order 2
yaw rate               heading unwrapped, derivative window 5, order 2 (both)
yaw accel              heading unwrapped, 2nd derivative window 5, order 3 (both)
=====================  ======================================  ==================================

Extended comfort (v2 ``ego_is_two_frame_extended_comfort``): acceleration magnitude (window 8),
jerk (window 15), yaw rate and yaw acceleration (window 5, order 2) of both plans over their
overlap; the RMS of the differences must stay <= 0.7 m/s^2, 0.5 m/s^3, 0.1 rad/s, 0.1 rad/s^2.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from enum import IntEnum

import numpy as np

from rap.sim.bicycle import PACIFICA, StateIndex, VehicleParameters
from rap.metrics.pdm_kernels import comfort_rows, savgol_rows

__all__ = [
    "ComfortIndex",
    "ComfortBounds",
    "ComfortFilters",
    "ExtendedComfortBounds",
    "V1_FILTERS",
    "V2_FILTERS",
    "savgol_filter",
    "comfort_signals",
    "comfort_checks",
    "is_comfortable",
    "extended_comfort",
]


class ComfortIndex(IntEnum):
    """Columns of :func:`comfort_checks` output (nuPlan's metric order)."""

    LON_ACCEL = 0
    LAT_ACCEL = 1
    JERK = 2
    LON_JERK = 3
    YAW_ACCEL = 4
    YAW_RATE = 5


@dataclasses.dataclass(frozen=True)
class ComfortBounds:
    """nuPlan comfort bounds (strict)."""

    min_lon_accel: float = -4.05  # [m/s^2]
    max_lon_accel: float = 2.40  # [m/s^2]
    max_abs_lat_accel: float = 4.89  # [m/s^2]
    max_abs_jerk: float = 8.37  # [m/s^3] magnitude of the acceleration's derivative
    max_abs_lon_jerk: float = 4.13  # [m/s^3]
    max_abs_yaw_rate: float = 0.95  # [rad/s]
    max_abs_yaw_accel: float = 1.93  # [rad/s^2]


@dataclasses.dataclass(frozen=True)
class ComfortFilters:
    """Savitzky-Golay windows of the comfort signals (``None`` = the whole signal)."""

    accel_window: int | None  # lon / lat acceleration smoothing
    jerk_window: int | None  # derivative of the smoothed acceleration
    accel_smoothing_window: int = 8  # acceleration smoothing before the jerk derivative
    yaw_window: int = 5  # yaw rate / yaw acceleration derivatives
    center_referenced: bool = False  # lon / lat acceleration at the box centre instead of the rear axle


V1_FILTERS = ComfortFilters(accel_window=None, jerk_window=None, center_referenced=False)
"""NAVSIM v1 (nuPlan-era) settings."""

V2_FILTERS = ComfortFilters(accel_window=8, jerk_window=15, center_referenced=True)
"""NAVSIM v2 settings."""


@dataclasses.dataclass(frozen=True)
class ExtendedComfortBounds:
    """Limits on the RMS difference of two overlapping plans (non-strict)."""

    acceleration: float = 0.7  # [m/s^2]
    jerk: float = 0.5  # [m/s^3]
    yaw_rate: float = 0.1  # [rad/s]
    yaw_accel: float = 0.1  # [rad/s^2]


@dataclasses.dataclass(frozen=True)
class _SavgolPlan:
    """Pieces of the (linear) Savitzky-Golay operator for signals of length n."""

    coeffs: np.ndarray  # (window,) convolution coefficients
    interior: tuple[int, int]  # output indices [i0, i1) computed by convolution
    head: np.ndarray  # (half, window) rows for outputs 0 .. half-1 from x[:window]
    tail: np.ndarray  # (half, window) rows for outputs n-half .. n-1 from x[n-window:]
    fit: np.ndarray | None  # (p + 1, n) polynomial fit of the whole signal (window == n)
    evaluate: np.ndarray | None  # (n, p + 1) its evaluation (derivative) at every sample


@functools.lru_cache(maxsize=128)
def _savgol_plan(n: int, window: int, polyorder: int, deriv: int, delta: float) -> _SavgolPlan:
    if not polyorder < window <= n:
        raise ValueError(f"savgol_filter: need polyorder < window <= n, got {polyorder}, {window}, {n}")
    half = window // 2
    pos = half if window % 2 else half - 0.5
    powers = np.arange(polyorder + 1)
    # Convolution coefficients (scipy.signal.savgol_coeffs, use="conv").
    offsets = np.arange(-pos, window - pos)[::-1]
    a = offsets[None, :] ** powers[:, None]
    rhs = np.zeros(polyorder + 1)
    if deriv <= polyorder:
        rhs[deriv] = math.factorial(deriv) / delta**deriv
    coeffs = np.linalg.lstsq(a, rhs, rcond=None)[0]
    # Edges: polynomial fitted to the first / last window samples, evaluated in place.
    t = np.arange(window, dtype=np.float64)
    fit = np.linalg.pinv(t[:, None] ** powers[None, :])  # (p + 1, window), lowest power first
    scale = np.array([math.perm(int(q), deriv) if q >= deriv else 0 for q in powers], dtype=np.float64)

    def basis(positions: np.ndarray) -> np.ndarray:
        return scale[None, :] * positions[:, None] ** np.clip(powers - deriv, 0, None)[None, :] / delta**deriv

    head = basis(np.arange(half, dtype=np.float64)) @ fit
    tail = basis(np.arange(window - half, window, dtype=np.float64)) @ fit
    whole_fit = whole_eval = None
    if window == n:
        # One polynomial through the whole signal: every output comes from the edge fits.
        whole_fit = fit
        whole_eval = basis(t)
    plan = _SavgolPlan(coeffs, (window - 1 - half, n - half), head, tail, whole_fit, whole_eval)
    for arr in (plan.coeffs, plan.head, plan.tail, plan.fit, plan.evaluate):
        if arr is not None:
            arr.flags.writeable = False
    return plan


def _kernel_plan(n: int, window: int, polyorder: int, deriv: int = 0, delta: float = 1.0) -> tuple:
    """A plan as the compiled kernels take it: (coeffs, i0, i1, head, tail, fit, evaluate)."""
    plan = _savgol_plan(n, int(window), int(polyorder), int(deriv), float(delta))
    if plan.fit is not None:
        return (plan.coeffs, 0, 0, plan.head, plan.tail, plan.fit, plan.evaluate)
    return (plan.coeffs, plan.interior[0], plan.interior[1], plan.head, plan.tail, _NO_FIT, _NO_FIT)


def savgol_filter(x: np.ndarray, window: int, polyorder: int, deriv: int = 0, delta: float = 1.0) -> np.ndarray:
    """Savitzky-Golay filter along the last axis, equal to ``scipy.signal.savgol_filter`` with
    ``mode="interp"`` (odd or even ``window``).

    Each signal is filtered on its own (a compiled loop, :func:`rap.metrics.pdm_kernels.savgol_rows`),
    so its result has the same bits whatever else is in the batch.

    Args:
        x: (..., n) float signals.
        window: Filter window (<= n).
        polyorder: Polynomial order (< window).
        deriv: Derivative order.
        delta: Sample spacing [s] for derivatives.

    Returns:
        (..., n) float64 filtered signals (or derivatives, per unit of ``delta``).
    """
    arr = np.asarray(x, dtype=np.float64)
    n = arr.shape[-1]
    plan = _savgol_plan(n, int(window), int(polyorder), int(deriv), float(delta))
    rows = np.ascontiguousarray(arr).reshape(-1, n)
    if plan.fit is not None:
        out = savgol_rows(rows, plan.coeffs, 0, 0, plan.head, plan.tail, plan.fit, plan.evaluate)
    else:
        i0, i1 = plan.interior
        out = savgol_rows(rows, plan.coeffs, i0, i1, plan.head, plan.tail, _NO_FIT, _NO_FIT)
    return out.reshape(arr.shape)


_NO_FIT = np.zeros((0, 0))
_NO_FIT.flags.writeable = False


def _unwrap(headings: np.ndarray) -> np.ndarray:
    """nuPlan's ``phase_unwrap`` (successive differences within pi)."""
    adj = np.zeros_like(headings)
    adj[..., 1:] = np.cumsum(np.round(np.diff(headings, axis=-1) / (2 * np.pi)), axis=-1)
    return headings - 2 * np.pi * adj


def _window(window: int | None, n: int) -> int:
    return n if window is None else min(window, n)


def _accelerations(states: np.ndarray, center: bool, vehicle: VehicleParameters) -> tuple[np.ndarray, np.ndarray]:
    ax = states[..., StateIndex.ACCELERATION_X]
    ay = states[..., StateIndex.ACCELERATION_Y]
    if center:
        # nuPlan's get_acceleration_shifted with displacement (d, 0): both the centripetal and the
        # angular-acceleration terms are displacement * scalar, so only x changes.
        d = vehicle.rear_axle_to_center
        w = states[..., StateIndex.ANGULAR_VELOCITY]
        alpha = states[..., StateIndex.ANGULAR_ACCELERATION]
        ax = ax + d * w * w + d * alpha
    return ax, ay


def comfort_signals(
    states: np.ndarray, dt: float, filters: ComfortFilters, vehicle: VehicleParameters = PACIFICA
) -> np.ndarray:
    """The six smoothed comfort signals.

    Args:
        states: (K, S, 11) states every ``dt`` seconds (columns :class:`rap.sim.StateIndex`).
        dt: Step [s].
        filters: Window settings (:data:`V1_FILTERS` or :data:`V2_FILTERS`).
        vehicle: Footprint (for box-centre accelerations).

    Returns:
        (K, 6, S) float64 signals, rows :class:`ComfortIndex` [m/s^2, m/s^2, m/s^3, m/s^3,
        rad/s^2, rad/s].
    """
    s = np.asarray(states, dtype=np.float64)
    n = s.shape[1]
    ax, ay = _accelerations(s, filters.center_referenced, vehicle)
    w_acc = _window(filters.accel_window, n)
    lon = np.round(savgol_filter(ax, w_acc, 2), 8)
    lat = np.round(savgol_filter(ay, w_acc, 2), 8)
    w_smooth = _window(filters.accel_smoothing_window, n)
    w_jerk = _window(filters.jerk_window, n)
    mag = np.hypot(s[..., StateIndex.ACCELERATION_X], s[..., StateIndex.ACCELERATION_Y])
    mag_s = np.round(savgol_filter(mag, w_smooth, 2), 8)
    lon_s = np.round(savgol_filter(ax, w_smooth, 2), 8)
    jerk = np.round(savgol_filter(mag_s, w_jerk, 2, deriv=1, delta=dt), 8)
    lon_jerk = np.round(savgol_filter(lon_s, w_jerk, 2, deriv=1, delta=dt), 8)
    heading = _unwrap(s[..., StateIndex.HEADING])
    w_yaw = _window(filters.yaw_window, n)
    yaw_accel = np.round(savgol_filter(heading, w_yaw, 3, deriv=2, delta=dt), 8)
    yaw_rate = np.round(savgol_filter(heading, w_yaw, 2, deriv=1, delta=dt), 8)
    return np.stack([lon, lat, jerk, lon_jerk, yaw_accel, yaw_rate], axis=1)


def comfort_checks(
    states: np.ndarray,
    dt: float,
    filters: ComfortFilters,
    bounds: ComfortBounds | None = None,
    vehicle: VehicleParameters = PACIFICA,
    all_only: bool = False,
) -> np.ndarray:
    """Whether each comfort signal stays strictly within its bounds at every step.

    Args:
        states: (K, S, 11) states every ``dt`` seconds.
        dt: Step [s].
        filters: Window settings.
        bounds: Limits; ``None`` means ``ComfortBounds()``.
        vehicle: Footprint.
        all_only: Stop a row's checks at its first failure (its later columns are then False):
            what :func:`is_comfortable` needs, at less cost.

    Returns:
        (K, 6) bool, columns :class:`ComfortIndex`.
    """
    b = bounds if bounds is not None else ComfortBounds()
    lo = np.array([b.min_lon_accel, -b.max_abs_lat_accel, -b.max_abs_jerk, -b.max_abs_lon_jerk, -b.max_abs_yaw_accel, -b.max_abs_yaw_rate])
    hi = np.array([b.max_lon_accel, b.max_abs_lat_accel, b.max_abs_jerk, b.max_abs_lon_jerk, b.max_abs_yaw_accel, b.max_abs_yaw_rate])
    s = np.asarray(states, dtype=np.float64)
    k, n = s.shape[:2]
    if k == 0:
        return np.zeros((0, 6), dtype=bool)
    # The signals of comfort_signals, filtered, rounded and checked row by row (compiled).
    ax, ay = _accelerations(s, filters.center_referenced, vehicle)
    mag = np.hypot(s[..., StateIndex.ACCELERATION_X], s[..., StateIndex.ACCELERATION_Y])
    heading = _unwrap(s[..., StateIndex.HEADING])
    w_yaw = _window(filters.yaw_window, n)
    return comfort_rows(
        *(np.ascontiguousarray(a) for a in (ax, ay, mag, heading)),
        _kernel_plan(n, _window(filters.accel_window, n), 2),
        _kernel_plan(n, _window(filters.accel_smoothing_window, n), 2),
        _kernel_plan(n, _window(filters.jerk_window, n), 2, 1, dt),
        _kernel_plan(n, w_yaw, 3, 2, dt),
        _kernel_plan(n, w_yaw, 2, 1, dt),
        lo, hi, all_only,
    )  # fmt: skip


def is_comfortable(
    states: np.ndarray,
    dt: float,
    filters: ComfortFilters,
    bounds: ComfortBounds | None = None,
    vehicle: VehicleParameters = PACIFICA,
) -> np.ndarray:
    """(K,) float64 comfort score: 1 if every check of :func:`comfort_checks` passes, else 0."""
    return comfort_checks(states, dt, filters, bounds, vehicle, all_only=True).all(axis=-1).astype(np.float64)


def _extended_features(states: np.ndarray, dt: float) -> np.ndarray:
    """(K, 4, n) acceleration magnitude, jerk, yaw rate, yaw acceleration (v2 definitions)."""
    n = states.shape[1]
    mag = np.hypot(states[..., StateIndex.ACCELERATION_X], states[..., StateIndex.ACCELERATION_Y])
    acc = np.round(savgol_filter(mag, min(8, n), 2), 8)
    jerk = np.round(savgol_filter(acc, min(15, n), 2, deriv=1, delta=dt), 8)
    heading = _unwrap(states[..., StateIndex.HEADING])
    w = min(5, n)
    yaw_rate = np.round(savgol_filter(heading, w, 2, deriv=1, delta=dt), 8)
    yaw_accel = np.round(savgol_filter(heading, w, 2, deriv=2, delta=dt), 8)
    return np.stack([acc, jerk, yaw_rate, yaw_accel], axis=1)


def extended_comfort(
    current: np.ndarray,
    previous: np.ndarray,
    offset_steps: int,
    dt: float,
    bounds: ExtendedComfortBounds | None = None,
    groups: Sequence[int] | None = None,
) -> np.ndarray:
    """Two-frame extended comfort (EPDMS ``EC``).

    Args:
        current: (K, S, 11) executed states of the current plans, row 0 = now.
        previous: (S, 11) or (K, S, 11) executed states of the plan made ``offset_steps`` steps
            earlier, row 0 = then.
        offset_steps: Time between the plans in steps (NAVSIM: 0.5 s / 0.1 s = 5).
        dt: Step [s].
        bounds: RMS limits; ``None`` means ``ExtendedComfortBounds()``.
        groups: Row counts of ``current`` (summing to K), one previous plan each: ``previous``
            is then (len(groups), S, 11) and every group's result equals a call with its rows
            and its (S, 11) previous plan alone (one pass for many scenes).

    Returns:
        (K,) float64: 1 where the plans agree on their overlap (current steps 0 .. S-1-offset vs
        previous steps offset .. S-1), else 0.
    """
    b = bounds if bounds is not None else ExtendedComfortBounds()
    cur = np.asarray(current, dtype=np.float64)
    prev = np.asarray(previous, dtype=np.float64)
    if prev.ndim == 2:
        prev = prev[None]
    if not 0 < offset_steps < cur.shape[1]:
        raise ValueError(f"extended_comfort: offset_steps must be in (0, {cur.shape[1]}), got {offset_steps}")
    if groups is not None:
        groups = [int(g) for g in groups]
        if prev.shape[0] != len(groups) or sum(groups) != cur.shape[0]:
            raise ValueError(f"extended_comfort: with groups, previous needs one plan per group ({len(groups)}) and the groups must sum to {cur.shape[0]}")
        f_prev = np.repeat(_extended_features(prev[:, offset_steps:], dt), groups, axis=0)
    else:
        f_prev = _extended_features(prev[:, offset_steps:], dt)
    f_cur = _extended_features(cur[:, :-offset_steps], dt)
    rms = np.sqrt(np.mean((f_cur - f_prev) ** 2, axis=-1))  # (K, 4)
    limits = np.array([b.acceleration, b.jerk, b.yaw_rate, b.yaw_accel])
    return (rms <= limits[None, :]).all(axis=-1).astype(np.float64)
