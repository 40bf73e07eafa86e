"""Tests for rap/sim/tracker.py: LQR tracking, profile fits, rollouts."""

from __future__ import annotations

import numpy as np
import pytest

from rap.sim import PACIFICA, LQRConfig, RolloutConfig, StateIndex, fit_profiles, interpolate_poses, propagate, simulate, track
from rap.sim.tracker import _lateral_constants, small_matmul
from rap.trajectory import NAVSIM_SAMPLING, TrajectorySampling


def _dense_profiles(poses: np.ndarray, dt: float, cfg: LQRConfig) -> tuple[np.ndarray, np.ndarray]:
    """NAVSIM's formulation: dense (2M x M) velocity fit and (M x M) curvature fit with pinv. The
    jerk band is built as NAVSIM's batch tracker builds it (super-diagonal written, then ``-eye``
    assigned over the first columns) for ``velocity_regularizer="navsim"``, and as true
    differences (nuPlan's tracker) for ``"nuplan"``."""
    d = np.diff(poses, axis=1)
    xy, dh = d[..., :2], np.arctan2(np.sin(d[..., 2]), np.cos(d[..., 2]))
    k, m = dh.shape
    heading = poses[:, :-1, 2]
    y = xy.reshape(k, -1)
    col = np.zeros(y.shape)
    col[:, 0::2], col[:, 1::2] = np.cos(heading), np.sin(heading)
    a = np.repeat(col[..., None] * dt**2, m, axis=2)
    a[..., 0] = col * dt
    mask = np.repeat(np.triu(np.ones((m, m), bool), k=1), 2, axis=0)
    a[:, mask] = 0.0
    band = np.zeros((m - 2, m - 1))
    if cfg.velocity_regularizer == "navsim":
        band[:, 1:] = np.eye(m - 2)
        band[:, :-1] = -np.eye(m - 2)
    else:
        band[:, 1:] += np.eye(m - 2)
        band[:, :-1] -= np.eye(m - 2)
    r = np.concatenate([np.zeros((m - 2, 1)), band], axis=1)
    sol = np.einsum("bij,bj->bi", np.linalg.pinv(a.transpose(0, 2, 1) @ a + cfg.jerk_penalty * r.T @ r) @ a.transpose(0, 2, 1), y)
    vel = sol[:, :1] + np.concatenate([np.zeros((k, 1)), np.cumsum(sol[:, 1:] * dt, axis=1)], axis=1)
    ac = np.repeat(np.tri(m)[None], k, axis=0)
    ac[:, :, 0] = vel * dt
    ac[:, 1:, 1:] *= (vel * dt**2)[:, 1:, None]
    q = cfg.curvature_rate_penalty * np.eye(m)
    q[0, 0] = cfg.initial_curvature_penalty
    x = np.einsum("bij,bj->bi", np.linalg.pinv(ac.transpose(0, 2, 1) @ ac + q) @ ac.transpose(0, 2, 1), dh)
    curv = x[:, :1] + np.concatenate([np.zeros((k, 1)), np.cumsum(x[:, 1:] * dt, axis=1)], axis=1)
    return vel, curv


def _dense_steering_rate(x0, v, accel, curv, dt, wheel_base, cfg):
    """NAVSIM's lateral LQR: products of the per-step 3x3 matrices."""
    n = curv.shape[1]
    vp = v[:, None] + accel[:, None] * np.arange(n) * dt
    k = v.shape[0]
    a = np.tile(np.eye(3), (k, 1, 1))
    b = np.zeros((k, 3, 1))
    g = np.zeros((k, 3))
    inm = np.zeros((3, 1))
    inm[2] = dt
    for i in range(n):
        m = np.tile(np.eye(3), (k, 1, 1))
        m[:, 0, 1] = vp[:, i] * dt
        m[:, 1, 2] = vp[:, i] * dt / wheel_base
        aff = np.zeros((k, 3))
        aff[:, 1] = -vp[:, i] * curv[:, i] * dt
        a = m @ a
        b = m @ b + inm
        g = np.einsum("bij,bj->bi", m, g) + aff
    e = np.einsum("bij,bj->bi", a, x0) + g
    e[:, 1:] = np.arctan2(np.sin(e[:, 1:]), np.cos(e[:, 1:]))
    qm = np.diag(cfg.q_lateral)
    bt = b.transpose(0, 2, 1)
    btq = bt @ qm
    inv = -1.0 / (np.einsum("bij,bji->bi", btq, b) + cfg.r_lateral)
    return (inv * np.einsum("bij,bj->bi", btq, e))[:, 0]


def _smooth_reference(rng: np.random.Generator, k: int, n: int = 41, dt: float = 0.1) -> np.ndarray:
    """Poses of a bicycle driven with smooth inputs (a feasible reference)."""
    state = np.zeros((k, 11))
    state[:, StateIndex.VELOCITY_X] = rng.uniform(3.0, 15.0, k)
    state[:, StateIndex.HEADING] = rng.uniform(-np.pi, np.pi, k)
    out = [state[:, :3].copy()]
    freq = rng.uniform(0.2, 0.6, k)
    amp = rng.uniform(0.0, 0.15, k)
    acc = rng.uniform(-1.0, 1.0, k)
    for i in range(n - 1):
        # Steer towards a slowly varying target angle; accelerate gently.
        target = amp * np.sin(2 * np.pi * freq * i * dt)
        rate = (target - state[:, StateIndex.STEERING_ANGLE]) / 0.5
        state = propagate(state, acc, rate, dt)
        out.append(state[:, :3].copy())
    return np.stack(out, axis=1)


@pytest.mark.parametrize("regularizer", ["navsim", "nuplan"])
def test_fit_profiles_matches_dense_least_squares(regularizer):
    rng = np.random.default_rng(0)
    poses = _smooth_reference(rng, 6)
    poses[:2, :, :2] += rng.normal(scale=0.05, size=(2, 41, 2))  # noisy, infeasible references too
    cfg = LQRConfig(velocity_regularizer=regularizer)
    vel, curv = fit_profiles(poses, 0.1, cfg)
    dvel, dcurv = _dense_profiles(poses, 0.1, cfg)
    np.testing.assert_allclose(vel, dvel, atol=1e-7)
    np.testing.assert_allclose(curv, dcurv, atol=1e-7)


def test_closed_form_lateral_lqr_matches_matrix_products():

    rng = np.random.default_rng(1)
    k, n, dt = 50, 10, 0.1
    x0 = rng.normal(scale=[0.5, 0.2, 0.1], size=(k, 3))
    v = rng.uniform(0.0, 20.0, k)
    accel = rng.uniform(-4.0, 3.0, k)
    curv = rng.normal(scale=0.02, size=(k, n))
    cfg = LQRConfig()
    weights, _ = _lateral_constants(n)
    got = _lateral_steering_rate(x0[:, 0], x0[:, 1], x0[:, 2], v, accel, curv @ weights, n, dt, PACIFICA.wheel_base, cfg)
    want = _dense_steering_rate(x0, v, accel, curv, dt, PACIFICA.wheel_base, cfg)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def _steady_reference(rng: np.random.Generator, k: int, accel_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """A bicycle on constant-curvature arcs (speeds 3-15 m/s, curvature up to 0.03 1/m, constant
    acceleration up to ``accel_scale``): initial states (K, 11) and poses (K, 41, 3)."""
    state = np.zeros((k, 11))
    state[:, StateIndex.VELOCITY_X] = rng.uniform(3.0, 15.0, k)
    state[:, StateIndex.HEADING] = rng.uniform(-3.0, 3.0, k)
    curv = rng.uniform(-0.03, 0.03, k)
    state[:, StateIndex.STEERING_ANGLE] = np.arctan(curv * PACIFICA.wheel_base)
    state[:, StateIndex.ANGULAR_VELOCITY] = state[:, StateIndex.VELOCITY_X] * curv
    accel = rng.uniform(-1.0, 1.0, k) * accel_scale
    state[:, StateIndex.ACCELERATION_X] = accel
    init = state.copy()
    poses = [state[:, :3].copy()]
    for _ in range(40):
        state = propagate(state, accel, np.zeros(k), 0.1)
        poses.append(state[:, :3].copy())
    return init, np.stack(poses, axis=1)


@pytest.mark.parametrize("accel_scale, tol", [(0.0, 0.01), (0.2, 0.07)])
def test_tracking_a_feasible_reference_reproduces_it(accel_scale, tol):
    # Round trip: a reference the bicycle can drive (forward dynamics) is tracked back to within
    # centimetres (the LQR lags a changing speed slightly, as nuPlan's does).
    init, ref = _steady_reference(np.random.default_rng(2), 8, accel_scale)
    states = track(ref, init)
    err = np.linalg.norm(states[..., :2] - ref[..., :2], axis=-1)
    assert err.max() < tol, err.max()
    dh = states[..., 2] - ref[..., 2]
    assert np.abs(np.arctan2(np.sin(dh), np.cos(dh))).max() < 0.01


def test_tracking_stays_close_to_a_wiggly_reference():
    ref = _smooth_reference(np.random.default_rng(3), 8)
    init = np.zeros((8, 11))
    init[:, :3] = ref[:, 0]
    init[:, StateIndex.VELOCITY_X] = fit_profiles(ref, 0.1)[0][:, 0]
    err = np.linalg.norm(track(ref, init)[..., :2] - ref[..., :2], axis=-1)
    assert err.max() < 1.0


@pytest.mark.parametrize("k", [1, 3])
def test_simulate_shapes_and_initial_row(k):
    ego = np.zeros(11)
    ego[[StateIndex.X, StateIndex.Y, StateIndex.HEADING, StateIndex.VELOCITY_X]] = [100.0, -5.0, 0.7, 8.0]
    t = NAVSIM_SAMPLING.times_s
    props = np.stack([np.stack([8.0 * t, 0.0 * t, 0.0 * t], axis=-1)] * k)
    out = simulate(props, NAVSIM_SAMPLING, ego)
    assert out.shape == (k, 41, 11) and out.dtype == np.float64
    np.testing.assert_array_equal(out[:, 0], np.broadcast_to(ego, (k, 11)))
    # Straight at constant speed in a rotated frame: ends 32 m ahead along heading 0.7.
    end = out[:, -1, :2] - ego[:2]
    np.testing.assert_allclose(end, np.broadcast_to(32.0 * np.array([np.cos(0.7), np.sin(0.7)]), (k, 2)), atol=0.05)
    assert simulate(props[0], NAVSIM_SAMPLING, ego).shape == (1, 41, 11)


def test_interpolate_poses_knots_and_heading_unwrap():
    sampling = TrajectorySampling(2, 0.5)
    props = np.array([[[1.0, 0.0, np.pi - 0.1], [2.0, 0.0, -np.pi + 0.1]]])
    out = interpolate_poses(props, sampling, np.array([10.0, 0.0, 0.0]), num_steps=11, dt=0.1)
    np.testing.assert_allclose(out[0, 5], [11.0, 0.0, np.pi - 0.1], atol=1e-12)
    # Between the knots the heading passes through pi, not through 0.
    assert np.all(np.abs(out[0, 6:10, 2]) > 3.0)
    # Past the plan's end the last pose is held.
    np.testing.assert_allclose(out[0, 10], [12.0, 0.0, -np.pi + 0.1], atol=1e-12)


def test_stopping_controller_brings_ego_to_rest():
    ego = np.zeros(11)
    ego[StateIndex.VELOCITY_X] = 0.15
    props = np.zeros((1, 8, 3))
    out = simulate(props, NAVSIM_SAMPLING, ego)
    assert np.all(np.diff(out[0, :, StateIndex.VELOCITY_X]) <= 1e-12)
    assert abs(out[0, -1, StateIndex.STEERING_ANGLE]) < 1e-12


def test_rollout_config_validation():
    with pytest.raises(ValueError):
        RolloutConfig(horizon_s=4.05, dt=0.1)
    with pytest.raises(ValueError):
        LQRConfig(tracking_horizon=1)


def test_velocity_regularizer_matrices():
    """NAVSIM's batch matrix penalizes a_0 .. a_{M-4} and only the last difference; nuPlan's
    penalizes every difference. x = (v0, a_0 .. a_3) for M = 5 displacements."""
    from rap.sim.tracker import velocity_regularizer_matrix

    navsim = velocity_regularizer_matrix(5, "navsim")
    nuplan = velocity_regularizer_matrix(5, "nuplan")
    np.testing.assert_array_equal(navsim, [[0, -1, 0, 0, 0], [0, 0, -1, 0, 0], [0, 0, 0, -1, 1]])
    np.testing.assert_array_equal(nuplan, [[0, -1, 1, 0, 0], [0, 0, -1, 1, 0], [0, 0, 0, -1, 1]])
    with pytest.raises(ValueError, match="velocity_regularizer must be one of navsim, nuplan"):
        LQRConfig(velocity_regularizer="smooth")


def test_navsim_regularizer_is_the_default_and_changes_braking_rollouts():
    """On a hard stop the two regularizers execute measurably different rollouts; the default is
    NAVSIM's (what the leaderboard runs)."""
    assert LQRConfig().velocity_regularizer == "navsim"
    t = NAVSIM_SAMPLING.times_s
    stop = np.minimum(12.0 * t - 0.5 * 6.0 * t**2, 12.0**2 / (2 * 6.0))
    plan = np.stack([stop, 0 * t, 0 * t], axis=1)[None]
    from rap.metrics.pdm_inputs import EgoState

    ego = EgoState(x=0.0, y=0.0, heading=0.0, vx=12.0)
    a = simulate(plan, NAVSIM_SAMPLING, ego, RolloutConfig())
    b = simulate(plan, NAVSIM_SAMPLING, ego, RolloutConfig(lqr=LQRConfig(velocity_regularizer="nuplan")))
    gap = np.abs(a[0, :, StateIndex.X] - b[0, :, StateIndex.X]).max()
    assert 0.01 < gap < 2.0



def _random_references(rng: np.random.Generator, sizes: list[int]) -> tuple[list, list]:
    refs, inits = [], []
    for k in sizes:
        props = np.cumsum(rng.uniform(0.0, 6.0, (k, 8, 3)) * [1.0, 0.2, 0.05], axis=1)
        origin = rng.normal(0.0, 100.0, 3)
        init = np.zeros(11)
        init[[StateIndex.X, StateIndex.Y, StateIndex.HEADING]] = origin
        init[StateIndex.VELOCITY_X] = rng.uniform(0.0, 15.0)
        refs.append(interpolate_poses(props, NAVSIM_SAMPLING, origin))
        inits.append(np.broadcast_to(init, (k, 11)))
    return refs, inits


def test_grouped_tracking_equals_tracking_each_group_alone():
    """One pass over many scenes' plans (groups) gives each group's rollouts bit for bit."""
    from rap.sim.tracker import small_matmul

    rng = np.random.default_rng(3)
    sizes = [1, 81, 17, 64, 2, 130]
    refs, inits = _random_references(rng, sizes)
    batch = track(np.concatenate(refs), np.concatenate(inits), groups=sizes)
    for part, ref, init in zip(np.split(batch, np.cumsum(sizes)[:-1]), refs, inits):
        assert np.array_equal(part, track(ref, init))
    for nu in (LQRConfig(velocity_regularizer="nuplan"),):
        cfg = RolloutConfig(lqr=nu)
        batch = track(np.concatenate(refs), np.concatenate(inits), cfg, groups=sizes)
        assert np.array_equal(batch[-sizes[-1] :], track(refs[-1], inits[-1], cfg))
    with pytest.raises(ValueError, match="groups"):
        track(np.concatenate(refs), np.concatenate(inits), groups=[1, 2])
    # The grouped product is each group's own product (BLAS rounds by call shape, so one call
    # for all rows would not do).
    a = rng.normal(size=(300, 40, 10))
    b = rng.normal(size=(10, 5))
    grouped = small_matmul(a, b, [100, 3, 197])
    assert np.array_equal(grouped[100:103], small_matmul(a[100:103], b))
    assert np.array_equal(grouped[103:], small_matmul(a[103:], b))


def test_interpolate_poses_takes_one_origin_per_plan():
    rng = np.random.default_rng(4)
    props = np.cumsum(rng.uniform(0.0, 5.0, (6, 8, 3)), axis=1)
    origins = rng.normal(0.0, 50.0, (6, 3))
    together = interpolate_poses(props, NAVSIM_SAMPLING, origins)
    for i in range(6):
        assert np.array_equal(together[i], interpolate_poses(props[i : i + 1], NAVSIM_SAMPLING, origins[i])[0])
    with pytest.raises(ValueError, match="origin"):
        interpolate_poses(props, NAVSIM_SAMPLING, origins[:2])


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2.0 * np.pi) - np.pi


def _lateral_steering_rate(lateral, heading_err, steer, v, accel, curvature_sums, horizon, dt, wheel_base, cfg):
    """The closed-form one-step lateral LQR in array form (what the compiled tracker loop
    computes per row): steering rate (K,) from the initial error state."""
    _, c = _lateral_constants(horizon)
    n = horizon
    inv_l = 1.0 / wheel_base
    a_dt = accel * dt
    sum_v = n * v + a_dt * c["s1"]
    a01 = dt * sum_v
    a12 = a01 * inv_l
    a02 = dt * dt * inv_l * (v * v * c["s1"] + v * a_dt * (c["st"] + c["s2"]) + a_dt * a_dt * c["skt"])
    b1 = dt * dt * inv_l * (v * c["s1"] + a_dt * c["s2"])
    b0 = dt**3 * inv_l * (v * v * c["st"] + v * a_dt * (c["sq"] + c["skt"]) + a_dt * a_dt * c["skq"])
    b2 = n * dt
    w0, w1, w2, w3, w4 = (curvature_sums[:, i] for i in range(5))
    g1 = -dt * (v * w0 + a_dt * w1)
    g0 = -dt * dt * (v * v * w2 + v * a_dt * w3 + a_dt * a_dt * w4)
    e0 = lateral + a01 * heading_err + a02 * steer + g0
    e1 = _wrap(heading_err + a12 * steer + g1)
    e2 = _wrap(steer)
    q0, q1, q2 = cfg.q_lateral
    denom = q0 * b0 * b0 + q1 * b1 * b1 + q2 * b2 * b2 + cfg.r_lateral
    tail = q0 * b0 * e0 + q1 * b1 * e1 + q2 * b2 * e2
    return -tail / denom


def _array_track(ref: np.ndarray, init: np.ndarray, cfg: RolloutConfig) -> np.ndarray:
    """The tracker's step loop in array form (all rows at once, bicycle.propagate)."""
    lqr, dt = cfg.lqr, cfg.dt
    k, n = ref.shape[:2]
    velocity, curvature = fit_profiles(ref, dt, lqr)
    last, horizon = n - 2, lqr.tracking_horizon
    window = np.minimum(np.arange(n - 1)[:, None] + np.arange(horizon)[None, :], last)
    weights, _ = _lateral_constants(horizon)
    curv_sums = small_matmul(curvature[:, window], weights)  # the tracker's own product: BLAS rounds by call shape
    b_lon = horizon * dt
    lon_gain = lqr.q_longitudinal * b_lon / (b_lon * lqr.q_longitudinal * b_lon + lqr.r_longitudinal)
    states = np.empty((k, n, 11))
    states[:, 0] = init
    cur = states[:, 0]
    for i in range(n - 1):
        v = cur[:, StateIndex.VELOCITY_X]
        ex, ey = cur[:, StateIndex.X] - ref[:, i, 0], cur[:, StateIndex.Y] - ref[:, i, 1]
        lateral = -ex * np.sin(ref[:, i, 2]) + ey * np.cos(ref[:, i, 2])
        heading_err = _wrap(cur[:, StateIndex.HEADING] - ref[:, i, 2])
        v_ref = velocity[:, min(i + horizon, last)]
        stop = (v_ref <= lqr.stopping_velocity) & (v <= lqr.stopping_velocity)
        accel_lqr = -lon_gain * (v - v_ref)
        accel = np.where(stop, -lqr.stopping_proportional_gain * (v - v_ref), accel_lqr)
        rate = _lateral_steering_rate(lateral, heading_err, cur[:, StateIndex.STEERING_ANGLE], v, accel_lqr, curv_sums[:, i], horizon, dt, cfg.vehicle.wheel_base, lqr)
        cur = propagate(cur, accel, np.where(stop, 0.0, rate), dt, cfg.vehicle, cfg.bicycle)
        states[:, i + 1] = cur
    return states


def test_compiled_tracker_loop_equals_the_array_step_loop():
    """``track`` (compiled row loop) executes what the array form of the LQR step and the
    bicycle's ``propagate`` give, for moving, stopping and turning rows. Equal to rounding, not
    bit for bit: on AVX-512 CPUs numpy's vectorised ``np.tan`` differs from the C library's
    ``tan`` (which the compiled loop calls) in the last bit for ~0.6 % of angles."""
    rng = np.random.default_rng(7)
    ref = _smooth_reference(rng, 24)
    ref[:4, :, :2] = ref[:4, :1, :2]  # standing still: the stopping controller acts
    ref[4:8, :, :2] += rng.normal(scale=0.3, size=(4, 41, 2))  # jagged references
    init = np.zeros((24, 11))
    init[:, StateIndex.X], init[:, StateIndex.Y], init[:, StateIndex.HEADING] = ref[:, 0, 0], ref[:, 0, 1], ref[:, 0, 2]
    init[:, StateIndex.VELOCITY_X] = rng.uniform(0.0, 12.0, 24)
    init[:4, StateIndex.VELOCITY_X] = 0.1
    init[:, StateIndex.STEERING_ANGLE] = rng.normal(scale=0.05, size=24)
    cfg = RolloutConfig()
    want = _array_track(ref, init, cfg)
    got = track(ref, init, cfg)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert (got[:4, -1, StateIndex.VELOCITY_X] < 0.1).all()  # the stopping rows slowed down
