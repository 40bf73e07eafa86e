"""LQR trajectory tracker and the rollout that turns planned poses into executed states.

This follows nuPlan's ``LQRTracker`` as NAVSIM batches it (``BatchLQRTracker``,
``batch_lqr_utils``, ``PDMSimulator``), vectorized over K candidate trajectories:

1. The planned poses (K, T, 3) in the ego frame are prepended with the current pose (0, 0, 0),
   moved to the world frame and interpolated to 10 Hz over the 4 s horizon (x, y linearly;
   heading linearly after unwrapping), giving (K, 41, 3) reference poses (``interpolate_poses``).
2. Velocity and curvature profiles are fitted to the reference by regularized least squares
   (jerk penalty 1e-4, curvature-rate penalty 1e-2; ``fit_profiles``).
3. Each 0.1 s step, a longitudinal one-step LQR (q 10, r 1, horizon 10 steps) picks the
   acceleration that reaches the reference speed 1 s ahead; a lateral one-step LQR on the
   linearized (lateral error, heading error, steering angle) system (q [1, 10, 0], r 1) picks the
   steering rate. Below 0.2 m/s (reference and current), a P controller (gain 0.5) stops the car.
4. The kinematic bicycle (:mod:`rap.sim.bicycle`) executes the commands.

Velocity-fit regularizer (``LQRConfig.velocity_regularizer``):

* ``"navsim"`` (default, what the NAVSIM leaderboard runs): NAVSIM's batch tracker builds its
  "banded difference" matrix by writing the super-diagonal and then ``-eye`` over the first
  columns, which clears the super-diagonal again except in the last row
  (``_make_banded_difference_matrix`` in NAVSIM's ``batch_lqr_utils``). Its "jerk penalty"
  therefore penalizes the accelerations a_0 .. a_{M-4} themselves and only the last difference
  a_{M-2} - a_{M-3}. rap reproduces that matrix exactly.
* ``"nuplan"``: the penalty the docstrings describe and nuPlan's own (non-batch) tracker uses,
  the differences of consecutive accelerations. Executed rollouts differ from ``"navsim"`` by
  about 0.04 m typically (up to ~0.6 m on hard braking), PDMS by up to ~0.01.

Implementation notes (numerically equivalent to NAVSIM's, much cheaper):

* NAVSIM solves the velocity fit with a (2M x M) matrix per proposal. Its normal matrix does not
  depend on the headings (each displacement row pair has unit norm), so the fit is one constant
  (M x M) linear map applied to the displacement projected on the reference heading.
* NAVSIM solves the curvature fit for (initial curvature, curvature rates) with a dense pseudo-
  inverse. Substituting the curvatures themselves gives the same minimizer of a tridiagonal
  system, solved here with the Thomas algorithm across the batch.
* The 10 products of 3x3 matrices of the lateral LQR are written out in closed form (the
  matrices are unit upper triangular).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from rap.geometry import wrap_angle
from rap.sim.bicycle import PACIFICA, BicycleConfig, StateIndex, VehicleParameters
from rap.sim.tracker_kernels import track_loop
from rap.trajectory import PoseIndex, TrajectorySampling

__all__ = [
    "VELOCITY_REGULARIZERS",
    "velocity_regularizer_matrix",
    "LQRConfig",
    "RolloutConfig",
    "interpolate_poses",
    "fit_profiles",
    "track",
    "simulate",
    "small_matmul",
]


VELOCITY_REGULARIZERS = ("navsim", "nuplan")


@dataclasses.dataclass(frozen=True)
class LQRConfig:
    """Tracker constants (nuPlan/NAVSIM ``LQRTracker`` defaults)."""

    q_longitudinal: float = 10.0  # weight on the speed error 1 horizon ahead
    r_longitudinal: float = 1.0  # weight on the acceleration
    q_lateral: tuple[float, float, float] = (1.0, 10.0, 0.0)  # lateral error, heading error, steering angle
    r_lateral: float = 1.0  # weight on the steering rate
    tracking_horizon: int = 10  # [steps] LQR lookahead
    jerk_penalty: float = 1e-4  # velocity-profile fit regularization
    velocity_regularizer: str = "navsim"  # "navsim" (the official batch tracker's matrix) | "nuplan" (acceleration differences)
    curvature_rate_penalty: float = 1e-2  # curvature-profile fit regularization
    initial_curvature_penalty: float = 1e-10  # keeps the curvature fit well-posed at zero speed
    stopping_proportional_gain: float = 0.5  # [1/s] P controller near standstill
    stopping_velocity: float = 0.2  # [m/s] below this (reference and current) the P controller acts

    def __post_init__(self) -> None:
        if self.tracking_horizon < 2:
            raise ValueError(f"LQRConfig.tracking_horizon must be >= 2, got {self.tracking_horizon}")
        if len(self.q_lateral) != 3:
            raise ValueError(f"LQRConfig.q_lateral needs 3 weights, got {self.q_lateral}")
        if self.velocity_regularizer not in VELOCITY_REGULARIZERS:
            raise ValueError(f"LQRConfig.velocity_regularizer must be one of {', '.join(VELOCITY_REGULARIZERS)}, got {self.velocity_regularizer!r}")
        for name in ("jerk_penalty", "curvature_rate_penalty", "initial_curvature_penalty", "stopping_proportional_gain", "stopping_velocity"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LQRConfig.{name} must be > 0, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """What ``simulate`` executes: 4 s at 0.1 s (41 states including now) by default."""

    horizon_s: float = 4.0  # [s]
    dt: float = 0.1  # [s] simulation and tracking step
    lqr: LQRConfig = dataclasses.field(default_factory=LQRConfig)
    bicycle: BicycleConfig = dataclasses.field(default_factory=BicycleConfig)
    vehicle: VehicleParameters = PACIFICA

    def __post_init__(self) -> None:
        if not (self.dt > 0 and self.horizon_s > 0):
            raise ValueError(f"RolloutConfig: dt and horizon_s must be > 0, got {self.dt}, {self.horizon_s}")
        steps = self.horizon_s / self.dt
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(f"RolloutConfig.horizon_s ({self.horizon_s}) must be a multiple of dt ({self.dt})")

    @property
    def num_steps(self) -> int:
        """Number of executed states including the current one (41 by default)."""
        return int(round(self.horizon_s / self.dt)) + 1


def interpolate_poses(
    proposals: np.ndarray,
    sampling: TrajectorySampling,
    origin: np.ndarray,
    num_steps: int = 41,
    dt: float = 0.1,
) -> np.ndarray:
    """Planned ego-frame poses -> world-frame reference poses at a fixed step.

    Args:
        proposals: (K, T, 3) x, y, heading [m, m, rad] in the ego (rear-axle) frame at now,
            sampled as ``sampling`` says (the current pose excluded).
        sampling: The proposals' sampling (T poses every ``interval_s``).
        origin: (3,) current rear-axle pose x, y, heading in the world frame [m, m, rad], or
            (K, 3) one per plan.
        num_steps: Output poses, the first at now.
        dt: Output step [s].

    Returns:
        (K, num_steps, 3) world poses at t = 0, dt, ... (clipped to the last planned pose past
        the plan's horizon, as nuPlan's ``InterpolatedTrajectory`` is queried by NAVSIM).
    """
    p = np.asarray(proposals, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != 3:
        raise ValueError(f"interpolate_poses: proposals must be (K, T, 3), got {p.shape}")
    if p.shape[1] != sampling.num_poses:
        raise ValueError(f"interpolate_poses: {p.shape[1]} poses but the sampling says {sampling.num_poses}")
    k, t = p.shape[:2]
    knots = np.zeros((k, t + 1, 3))
    knots[:, 1:] = p
    knots[..., PoseIndex.HEADING] = np.unwrap(knots[..., PoseIndex.HEADING], axis=1)
    times = np.clip(np.arange(num_steps) * dt, 0.0, t * sampling.interval_s)
    u = times / sampling.interval_s
    lo = np.minimum(np.floor(u + 1e-12).astype(np.intp), t - 1)
    w = (u - lo)[None, :, None]
    local = knots[:, lo] * (1.0 - w) + knots[:, lo + 1] * w  # (K, S, 3)
    o = np.asarray(origin, dtype=np.float64)
    if o.ndim == 2:
        if o.shape != (k, 3):
            raise ValueError(f"interpolate_poses: origin must be (3,) or ({k}, 3), got {o.shape}")
        ox, oy, oh = (o[:, i, None] for i in range(3))  # (K, 1): the same arithmetic per row
    else:
        ox, oy, oh = (float(v) for v in o[:3])
    c, s = np.cos(oh), np.sin(oh)
    out = np.empty_like(local)
    out[..., PoseIndex.X] = ox + c * local[..., PoseIndex.X] - s * local[..., PoseIndex.Y]
    out[..., PoseIndex.Y] = oy + s * local[..., PoseIndex.X] + c * local[..., PoseIndex.Y]
    out[..., PoseIndex.HEADING] = wrap_angle(local[..., PoseIndex.HEADING] + oh)
    return out


_SINGLE_THREAD_MNK = 65536 * 4
"""OpenBLAS multithreads a GEMM above M*N*K = 65536 * GEMM_MULTITHREAD_THRESHOLD (4); its worker
threads spin and stall when the other cores are busy (a shared 2-core host), so small products are
kept below that size."""


def small_matmul(a: np.ndarray, b: np.ndarray, groups: Sequence[int] | None = None) -> np.ndarray:
    """``a @ b`` for a (..., m) by (m, n) with a tall ``a``, computed in row blocks small enough
    for a single-threaded BLAS call each (fast and immune to busy-core stalls).

    BLAS rounds a row's products differently depending on the shape of the call and the row's
    place in it, so ``groups`` (row counts along ``a``'s first axis, summing to its length)
    computes each group by itself, exactly as ``small_matmul`` of that group alone would: the
    batched scorer passes one group per scene to get the bits of scoring each scene alone."""
    a2 = np.ascontiguousarray(a).reshape(-1, a.shape[-1])
    out = np.empty((a2.shape[0], b.shape[1]))
    rows = max(_SINGLE_THREAD_MNK // max(a2.shape[1] * b.shape[1], 1), 1)
    if groups is None:
        for start in range(0, a2.shape[0], rows):
            np.matmul(a2[start : start + rows], b, out=out[start : start + rows])
    else:
        # The same BLAS calls as small_matmul on each group alone (a contiguous block of a2).
        per = a2.shape[0] // a.shape[0] if a.shape[0] else 1  # rows of a2 per leading item
        lo = 0
        for g in groups:
            hi = lo + int(g) * per
            for start in range(lo, hi, rows):
                stop = min(start + rows, hi)
                np.matmul(a2[start:stop], b, out=out[start:stop])
            lo = hi
        if lo != a2.shape[0]:
            raise ValueError(f"small_matmul: groups sum to {lo // max(per, 1)}, expected {a.shape[0]}")
    return out.reshape(a.shape[:-1] + (b.shape[1],))


def velocity_regularizer_matrix(num_displacements: int, kind: str = "navsim") -> np.ndarray:
    """(M - 2, M) regularizer R of the velocity fit over x = (v0, a_0 .. a_{M-2}).

    ``"nuplan"``: rows a_{i+1} - a_i. ``"navsim"``: NAVSIM's batch matrix, rows -a_i, except the
    last, a_{M-2} - a_{M-3} (see the module docstring)."""
    m = num_displacements
    r = np.zeros((max(m - 2, 0), m))
    idx = np.arange(m - 2)
    r[idx, idx + 1] = -1.0
    if kind == "nuplan":
        r[idx, idx + 2] = 1.0
    elif kind == "navsim":
        if m > 2:
            r[m - 3, m - 1] = 1.0
    else:
        raise ValueError(f"velocity regularizer must be one of {', '.join(VELOCITY_REGULARIZERS)}, got {kind!r}")
    return r


@functools.lru_cache(maxsize=16)
def _velocity_fit_matrix(num_displacements: int, dt: float, jerk_penalty: float, regularizer: str = "navsim") -> np.ndarray:
    """(M, M) map from along-heading displacements to (v0, a_0 .. a_{M-2})."""
    m = num_displacements
    c = np.tril(np.full((m, m), dt * dt))
    c[:, 0] = dt
    r = velocity_regularizer_matrix(m, regularizer)
    normal = c.T @ c + jerk_penalty * (r.T @ r)
    g = np.linalg.pinv(normal) @ c.T
    g.flags.writeable = False
    return g


def _solve_tridiagonal(diag: np.ndarray, off: float, rhs: np.ndarray) -> np.ndarray:
    """Solves (K, M) symmetric tridiagonal systems with constant off-diagonal ``off``."""
    k, m = diag.shape
    cp = np.empty((k, m))
    dp = np.empty((k, m))
    denom = diag[:, 0]
    cp[:, 0] = off / denom
    dp[:, 0] = rhs[:, 0] / denom
    for i in range(1, m):
        denom = diag[:, i] - off * cp[:, i - 1]
        cp[:, i] = off / denom
        dp[:, i] = (rhs[:, i] - off * dp[:, i - 1]) / denom
    x = np.empty((k, m))
    x[:, -1] = dp[:, -1]
    for i in range(m - 2, -1, -1):
        x[:, i] = dp[:, i] - cp[:, i] * x[:, i + 1]
    return x


def fit_profiles(
    poses: np.ndarray, dt: float, config: LQRConfig | None = None, groups: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Velocity and curvature profiles of reference poses (nuPlan's regularized least squares).

    Args:
        poses: (K, N, 3) world poses x, y, heading [m, m, rad] every ``dt`` seconds, N >= 3.
        dt: Pose spacing [s].
        config: Regularization weights; ``None`` means ``LQRConfig()``.
        groups: Row counts (summing to K) fitted as separate calls would fit them, bit for bit
            (see :func:`small_matmul`); ``None``: one group.

    Returns:
        velocity (K, N - 1) [m/s] and curvature (K, N - 1) [1/m] at poses 0 .. N - 2.
    """
    cfg = config if config is not None else LQRConfig()
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != 3 or p.shape[1] < 3:
        raise ValueError(f"fit_profiles: poses must be (K, N >= 3, 3), got {p.shape}")
    d = np.diff(p, axis=1)  # (K, M, 3)
    m = d.shape[1]
    heading = p[:, :-1, PoseIndex.HEADING]
    along = np.cos(heading) * d[..., PoseIndex.X] + np.sin(heading) * d[..., PoseIndex.Y]  # (K, M)
    sol = small_matmul(along, _velocity_fit_matrix(m, float(dt), float(cfg.jerk_penalty), cfg.velocity_regularizer).T, groups)
    velocity = np.empty((p.shape[0], m))
    velocity[:, 0] = sol[:, 0]
    velocity[:, 1:] = sol[:, :1] + np.cumsum(sol[:, 1:] * dt, axis=1)

    # Curvature fit in terms of the curvatures themselves: minimize
    #   sum_i (dh_i - v_i dt k_i)^2 + eps k_0^2 + (c / dt^2) sum_j (k_j - k_{j-1})^2.
    dh = np.arctan2(np.sin(d[..., PoseIndex.HEADING]), np.cos(d[..., PoseIndex.HEADING]))
    a = velocity * dt
    w = cfg.curvature_rate_penalty / (dt * dt)
    degree = np.full(m, 2.0)
    degree[0] = degree[-1] = 1.0
    diag = a * a + w * degree
    diag[:, 0] += cfg.initial_curvature_penalty
    curvature = _solve_tridiagonal(diag, -w, a * dh)
    return velocity, curvature


@functools.lru_cache(maxsize=8)
def _lateral_constants(n: int) -> tuple[np.ndarray, dict[str, float]]:
    """Window weights (n, 5) and scalar sums for the closed-form lateral LQR over n steps.

    NAVSIM multiplies the ``horizon`` per-step (3 x 3) transition matrices of the linearized
    lateral dynamics (speed v + accel * k * dt, curvature window k_0 .. k_{N-1}). The matrices are
    unit upper triangular, so the product, input and drift terms are polynomials in (v, accel)
    with these window sums of the curvature as coefficients; the tracker evaluates them directly
    (:func:`rap.sim.tracker_kernels.track_loop`)."""
    k = np.arange(n, dtype=np.float64)
    t = k * (k - 1) / 2  # sum_{j<k} j
    q = (k - 1) * k * (2 * k - 1) / 6  # sum_{j<k} j^2
    u = (n - 1) * n / 2 - k * (k + 1) / 2
    weights = np.stack([np.ones(n), k, (n - 1 - k), u + k * (n - 1 - k), k * u], axis=1)
    weights.flags.writeable = False
    sums = {
        "s1": float(k.sum()), "s2": float((k * k).sum()), "st": float(t.sum()), "skt": float((k * t).sum()),
        "sq": float(q.sum()), "skq": float((k * q).sum()),
    }
    return weights, sums


def track(
    reference: np.ndarray,
    initial_states: np.ndarray,
    config: RolloutConfig | None = None,
    groups: Sequence[int] | None = None,
) -> np.ndarray:
    """Executes reference poses with the LQR tracker on the kinematic bicycle.

    Args:
        reference: (K, N, 3) world reference poses every ``config.dt`` seconds, the first at now.
        initial_states: (11,) or (K, 11) current vehicle state(s) (columns :class:`StateIndex`).
        config: Rollout constants; ``None`` means ``RolloutConfig()``.
        groups: Row counts (summing to K): the rows are tracked in one pass, every group's
            states bit-identical to ``track`` of that group alone (the batched scorer tracks many
            scenes at once this way); ``None``: one group.

    Returns:
        (K, N, 11) executed states; row 0 is the initial state.
    """
    cfg = config if config is not None else RolloutConfig()
    lqr = cfg.lqr
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 3 or ref.shape[2] != 3 or ref.shape[1] < 3:
        raise ValueError(f"track: reference must be (K, N >= 3, 3), got {ref.shape}")
    k, n = ref.shape[:2]
    init = np.asarray(initial_states, dtype=np.float64)
    if init.shape not in ((len(StateIndex),), (k, len(StateIndex))):
        raise ValueError(f"track: initial_states must be (11,) or ({k}, 11), got {init.shape}")
    dt = cfg.dt
    if groups is not None:
        groups = [int(g) for g in groups]
        if any(g < 0 for g in groups) or sum(groups) != k:
            raise ValueError(f"track: groups must be row counts summing to {k}, got {groups}")
    velocity, curvature = fit_profiles(ref, dt, lqr, groups)  # (K, N - 1)
    last = n - 2
    horizon = lqr.tracking_horizon
    window = np.minimum(np.arange(n - 1)[:, None] + np.arange(horizon)[None, :], last)  # (N-1, H)
    weights, _ = _lateral_constants(horizon)
    curv_sums = small_matmul(curvature[:, window], weights, groups)  # (K, N-1, 5)
    b_lon = horizon * dt
    lon_gain = lqr.q_longitudinal * b_lon / (b_lon * lqr.q_longitudinal * b_lon + lqr.r_longitudinal)
    # The step loop runs compiled, row by row (rap.sim.tracker_kernels.track_loop: the
    # operations of the closed-form lateral LQR and bicycle.propagate in the same order).
    _, c = _lateral_constants(horizon)
    inv_l = 1.0 / cfg.vehicle.wheel_base
    lat = np.array([
        *lqr.q_lateral, lqr.r_lateral, inv_l, c["s1"], c["s2"], c["st"], c["st"] + c["s2"], c["skt"], c["sq"] + c["skt"], c["skq"],
        dt * dt * inv_l, dt**3 * inv_l, horizon * dt,
    ], dtype=np.float64)  # fmt: skip
    lon = np.array([lqr.stopping_velocity, lqr.stopping_proportional_gain, lon_gain, dt], dtype=np.float64)
    bike = cfg.bicycle
    bicycle = np.array([dt / (dt + bike.accel_time_constant), dt / (dt + bike.steering_angle_time_constant), bike.max_steering_angle, cfg.vehicle.wheel_base])
    states = np.empty((k, n, len(StateIndex)))
    states[:, 0] = np.broadcast_to(init, (k, len(StateIndex)))
    heading = np.ascontiguousarray(ref[..., PoseIndex.HEADING])
    track_loop(states, ref, np.sin(heading), np.cos(heading), np.ascontiguousarray(velocity), np.ascontiguousarray(curv_sums), horizon, lon, lat, bicycle)
    return states


def _initial_state_array(ego: Any) -> np.ndarray:
    if hasattr(ego, "state_array"):
        return np.asarray(ego.state_array(), dtype=np.float64)
    arr = np.asarray(ego, dtype=np.float64)
    if arr.shape != (len(StateIndex),):
        raise ValueError(f"simulate: ego must have state_array() or be an (11,) state array, got {arr.shape}")
    return arr


def simulate(
    proposals: np.ndarray,
    sampling: TrajectorySampling,
    ego: Any,
    config: RolloutConfig | None = None,
) -> np.ndarray:
    """Executes K planned trajectories from the current ego state.

    Args:
        proposals: (K, T, 3) planned x, y, heading [m, m, rad] in the ego frame at now
            (rear axle, x forward, y left), sampled per ``sampling``; (T, 3) is read as K = 1.
        sampling: The proposals' sampling (NAVSIM: 8 poses every 0.5 s).
        ego: The current ego state: an object with ``state_array() -> (11,)`` (e.g.
            :class:`rap.metrics.pdm_inputs.EgoState`) or an (11,) array (columns
            :class:`~rap.sim.bicycle.StateIndex`, world pose, ego-frame dynamics).
        config: Rollout constants; ``None`` means ``RolloutConfig()`` (4 s at 0.1 s).

    Returns:
        (K, 41, 11) float64 executed states (columns :class:`~rap.sim.bicycle.StateIndex`,
        world frame), row 0 the current state.
    """
    cfg = config if config is not None else RolloutConfig()
    p = np.asarray(proposals, dtype=np.float64)
    if p.ndim == 2:
        p = p[None]
    if not np.all(np.isfinite(p)):
        raise ValueError("simulate: proposals contain non-finite values")
    init = _initial_state_array(ego)
    origin = init[[StateIndex.X, StateIndex.Y, StateIndex.HEADING]]
    reference = interpolate_poses(p, sampling, origin, cfg.num_steps, cfg.dt)
    return track(reference, init, cfg)
