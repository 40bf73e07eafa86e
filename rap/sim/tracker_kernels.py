"""Compiled step loop of :func:`rap.sim.tracker.track` (numba).

Per row, per step: the LQR longitudinal and closed-form lateral controls, then one step of the
lagged kinematic bicycle (:func:`rap.sim.bicycle.propagate`), with the floating-point operations
of the array code in the same order, so the executed states are bit-identical to it; compiled on
first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["track_loop"]

_PI = math.pi
_TWO_PI = 2.0 * math.pi

# Columns of rap.sim.bicycle.StateIndex.
_X, _Y, _H, _VX, _VY, _AX, _AY, _STEER, _STEER_RATE, _W, _ALPHA = range(11)


@numba.njit(cache=True, nogil=True, inline="always")
def _wrap(angle):
    """The LQR's angle wrap to [-pi, pi)."""
    return (angle + _PI) % (2.0 * _PI) - _PI


@numba.njit(cache=True, nogil=True, inline="always")
def _wrap_heading(angle):
    """``rap.geometry.wrap_angle``: the wrap to [-pi, pi), with mod's round-up to +pi folded back."""
    wrapped = (angle + _PI) % _TWO_PI - _PI
    return wrapped - _TWO_PI if wrapped >= _PI else wrapped


@numba.njit(cache=True, nogil=True)
def track_loop(states, ref, ref_sin, ref_cos, velocity, curv, horizon, lon, lat, bicycle):
    """Fills ``states`` (K, N, 11) from its row 0.

    Args:
        states: (K, N, 11) output; ``states[:, 0]`` holds the initial states.
        ref: (K, N, 3) reference poses; ref_sin, ref_cos: (K, N) of their headings.
        velocity: (K, N - 1) fitted reference speeds; curv: (K, N - 1, 5) curvature window sums.
        horizon: LQR horizon [steps].
        lon: (stopping velocity, stopping gain, LQR gain, dt).
        lat: (q0, q1, q2, r, 1 / wheel base, s1, s2, st, st + s2, skt, sq + skt, skq, dt^2 / L,
            dt^3 / L, n dt): the closed-form lateral LQR's constants, each combined in Python as
            the array form combined it (``tracker._lateral_constants``).
        bicycle: (accel lag factor, steering lag factor, max steering angle, wheel base).
    """
    k_rows, n = states.shape[0], states.shape[1]
    last = n - 2
    v_stop, k_stop, lon_gain, dt = lon[0], lon[1], lon[2], lon[3]
    q0, q1, q2, r_lat, inv_l = lat[0], lat[1], lat[2], lat[3], lat[4]
    s1, s2, st, st_s2, skt, sq_skt, skq = lat[5], lat[6], lat[7], lat[8], lat[9], lat[10], lat[11]
    dt2_l, dt3_l, b2 = lat[12], lat[13], lat[14]
    acc_lag, steer_lag, max_steer, wheel_base = bicycle[0], bicycle[1], bicycle[2], bicycle[3]
    for r in range(k_rows):
        for i in range(n - 1):
            cur = states[r, i]
            nxt = states[r, i + 1]
            v = cur[_VX]
            ex = cur[_X] - ref[r, i, 0]
            ey = cur[_Y] - ref[r, i, 1]
            lateral = -ex * ref_sin[r, i] + ey * ref_cos[r, i]
            heading_err = _wrap(cur[_H] - ref[r, i, 2])
            v_ref = velocity[r, min(i + horizon, last)]
            stop = v_ref <= v_stop and v <= v_stop
            accel_lqr = -lon_gain * (v - v_ref)
            accel_cmd = -k_stop * (v - v_ref) if stop else accel_lqr
            steer = cur[_STEER]
            # Lateral LQR (tracker._lateral_steering_rate), the same operations in order.
            a_dt = accel_lqr * dt
            sum_v = horizon * v + a_dt * s1
            a01 = dt * sum_v
            a12 = a01 * inv_l
            a02 = dt2_l * (v * v * s1 + v * a_dt * st_s2 + a_dt * a_dt * skt)
            b1 = dt2_l * (v * s1 + a_dt * s2)
            b0 = dt3_l * (v * v * st + v * a_dt * sq_skt + a_dt * a_dt * skq)
            g1 = -dt * (v * curv[r, i, 0] + a_dt * curv[r, i, 1])
            g0 = -dt * dt * (v * v * curv[r, i, 2] + v * a_dt * curv[r, i, 3] + a_dt * a_dt * curv[r, i, 4])
            e0 = lateral + a01 * heading_err + a02 * steer + g0
            e1 = _wrap(heading_err + a12 * steer + g1)
            e2 = _wrap(steer)
            denom = q0 * b0 * b0 + q1 * b1 * b1 + q2 * b2 * b2 + r_lat
            tail = q0 * b0 * e0 + q1 * b1 * e1 + q2 * b2 * e2
            steer_rate_cmd = 0.0 if stop else -tail / denom
            # Lagged kinematic bicycle (bicycle.propagate).
            accel = cur[_AX]
            heading = cur[_H]
            ideal_steer = dt * steer_rate_cmd + steer
            new_accel = acc_lag * (accel_cmd - accel) + accel
            lagged_steer = steer_lag * (ideal_steer - steer) + steer
            new_steer_rate = (lagged_steer - steer) / dt
            nxt[_X] = cur[_X] + dt * v * np.cos(heading)
            nxt[_Y] = cur[_Y] + dt * v * np.sin(heading)
            nxt[_H] = _wrap_heading(heading + dt * v * np.tan(steer) / wheel_base)
            new_v = v + dt * new_accel
            nxt[_VX] = new_v
            nxt[_VY] = 0.0
            new_steer = min(max(steer + dt * new_steer_rate, -max_steer), max_steer)
            nxt[_STEER] = new_steer
            yaw_rate = new_v * np.tan(new_steer) / wheel_base
            nxt[_W] = yaw_rate
            nxt[_AX] = new_accel
            nxt[_AY] = 0.0
            nxt[_ALPHA] = (yaw_rate - cur[_W]) / dt
            nxt[_STEER_RATE] = new_steer_rate
