"""Tests for rap/augment/recovery.py: start checks, target modes, the smooth rejoin's limits and
convergence, determinism, and counts on the shipped WOMD scenario."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rap import geometry
from rap.augment.cross_agent import recenter
from rap.augment.recovery import (
    REJECT_REASONS,
    RecoveryConfig,
    RecoveryTarget,
    expert_reference,
    plan_perturbation,
    plan_recovery,
    smooth_rejoin,
)
from rap.dataset.sample import Perturbation, SampleKind
from rap.kinematics import DrivingCommand, agent_velocity, future_target, history_poses
from rap.metrics.comfort import ComfortBounds
from rap.sim.bicycle import PACIFICA, arc_step
from rap.trajectory import NAVSIM_SAMPLING, RAP_SAMPLING, WOD_E2E_SAMPLING

# WOMD-like test logs hold 1 s of history before the current step (the product default is 1.5 s).
SHORT_HISTORY = dict(history_num=4, history_interval_s=0.25)

NONE = Perturbation(dx=0.0, dy=0.0, dheading=0.0, speed_scale=1.0, accel_scale=1.0)
EXPERT = RecoveryConfig(target=RecoveryTarget.EXPERT_FUTURE, **SHORT_HISTORY)


def _pert(dx=0.0, dy=0.0, dh=0.0, speed=1.0, accel=1.0) -> Perturbation:
    return Perturbation(dx=dx, dy=dy, dheading=dh, speed_scale=speed, accel_scale=accel)


def _logged_in_perturbed_frame(poses_l: np.ndarray, p: Perturbation) -> np.ndarray:
    out = np.empty_like(poses_l)
    out[:, :2] = geometry.to_frame(poses_l[:, :2], (p.dx, p.dy), p.dheading)
    out[:, 2] = geometry.heading_to_frame(poses_l[:, 2], p.dheading)
    return out


def _perturbed_to_logged(poses_p: np.ndarray, p: Perturbation) -> np.ndarray:
    out = np.empty_like(poses_p)
    out[:, :2] = geometry.from_frame(poses_p[:, :2], (p.dx, p.dy), p.dheading)
    out[:, 2] = geometry.heading_from_frame(poses_p[:, 2], p.dheading)
    return out


# ----------------------------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------------------------


def test_config_defaults_and_presets():
    cfg = RecoveryConfig(**SHORT_HISTORY)
    assert cfg == RecoveryConfig.preset("rap", **SHORT_HISTORY)
    assert cfg.dx_m == (-0.5, 0.5) and cfg.dy_m == (-0.5, 0.5)
    assert cfg.dheading_rad[1] == pytest.approx(math.radians(15))
    assert cfg.speed_scale == (0.8, 1.2) and cfg.accel_scale == (0.9, 1.1)
    assert cfg.target is RecoveryTarget.SMOOTH_REJOIN
    assert cfg.max_curvature == pytest.approx(math.tan(math.radians(35)) / 3.089)
    wide = RecoveryConfig.preset("wide", rejoin_horizon_s=5.0, **SHORT_HISTORY)
    assert wide.dy_m == (-1.0, 1.0) and wide.rejoin_horizon_s == 5.0
    assert RecoveryConfig(target="expert_future", **SHORT_HISTORY).target is RecoveryTarget.EXPERT_FUTURE
    with pytest.raises(ValueError, match="known"):
        RecoveryConfig.preset("huge", **SHORT_HISTORY)
    with pytest.raises(ValueError, match="dx_m"):
        RecoveryConfig(dx_m=(1.0, -1.0), **SHORT_HISTORY)
    with pytest.raises(ValueError, match="target"):
        RecoveryConfig(target="teleport", **SHORT_HISTORY)
    with pytest.raises(ValueError, match="max_steer_rad"):
        RecoveryConfig(max_steer_rad=2.0, **SHORT_HISTORY)


def test_config_limits_come_from_the_shared_vehicle_and_comfort_records():
    cfg = RecoveryConfig(**SHORT_HISTORY)
    comfort = ComfortBounds()
    assert cfg.wheelbase_m == PACIFICA.wheel_base and cfg.max_steer_rad == PACIFICA.max_steering_angle
    assert cfg.max_curvature == PACIFICA.max_curvature == math.tan(PACIFICA.max_steering_angle) / PACIFICA.wheel_base
    assert cfg.max_accel_mps2 == comfort.max_lon_accel
    assert cfg.max_decel_mps2 == -comfort.min_lon_accel
    assert cfg.max_lat_accel_mps2 == comfort.max_abs_lat_accel
    # The values the shipped datasets were generated with.
    assert (cfg.wheelbase_m, cfg.max_steer_rad) == (3.089, math.radians(35.0))
    assert (cfg.max_accel_mps2, cfg.max_decel_mps2, cfg.max_lat_accel_mps2) == (2.40, 4.05, 4.89)
    # Fields stay settable; the curvature limit follows them.
    other = RecoveryConfig(wheelbase_m=2.5, max_steer_rad=math.radians(30), **SHORT_HISTORY)
    assert other.max_curvature == pytest.approx(math.tan(math.radians(30)) / 2.5)


def test_rejoin_steps_are_the_shared_arc_bicycle(turn_scene):
    """Every rollout step is :func:`rap.sim.bicycle.arc_step` of the applied controls."""
    cfg = RecoveryConfig.preset("wide", **SHORT_HISTORY)
    ref = expert_reference(turn_scene, turn_scene.ego_index, turn_scene.current_index)
    roll = smooth_rejoin(ref, np.array([0.3, -0.6, 0.2]), 6.0, RAP_SAMPLING, cfg)
    dt = roll.times[1] - roll.times[0]
    unwrapped = roll.states.copy()
    unwrapped[:, 2] = roll.states[0, 2] + np.concatenate([[0.0], np.cumsum(geometry.wrap_angle(np.diff(roll.states[:, 2])))])
    stepped = arc_step(unwrapped[:-1], roll.curvature, roll.accel, dt)
    np.testing.assert_allclose(stepped[:, :2], roll.states[1:, :2], atol=1e-9)
    np.testing.assert_allclose(geometry.wrap_angle(stepped[:, 2] - roll.states[1:, 2]), 0.0, atol=1e-9)
    np.testing.assert_allclose(stepped[:, 3], roll.states[1:, 3], atol=1e-9)


def test_draw_stays_in_ranges_and_is_deterministic():
    cfg = RecoveryConfig.preset("wide", **SHORT_HISTORY)
    a = [cfg.draw(np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    draws = np.array([[getattr(cfg.draw(rng), f) for f in ("dx", "dy", "dheading", "speed_scale", "accel_scale")] for _ in range(500)])
    lows = [cfg.dx_m[0], cfg.dy_m[0], cfg.dheading_rad[0], cfg.speed_scale[0], cfg.accel_scale[0]]
    highs = [cfg.dx_m[1], cfg.dy_m[1], cfg.dheading_rad[1], cfg.speed_scale[1], cfg.accel_scale[1]]
    assert np.all(draws >= lows) and np.all(draws <= highs)


# ----------------------------------------------------------------------------------------------
# Start checks.
# ----------------------------------------------------------------------------------------------


def test_start_overlapping_a_parked_car_is_rejected(straight_scene):
    # The parked car's box spans y in [1.3, 3.3]; the ego's (width 2) at dy = 0.5 spans [-0.5, 1.5].
    assert plan_perturbation(straight_scene, 10, _pert(dy=0.5), EXPERT, RAP_SAMPLING) == (None, "overlap")
    plan, reason = plan_perturbation(straight_scene, 10, _pert(dy=0.2), EXPERT, RAP_SAMPLING)
    assert reason is None and plan.kind is SampleKind.RECOVERY
    # With the check off the same start is accepted.
    off = RecoveryConfig(target=RecoveryTarget.EXPERT_FUTURE, check_overlap=False, **SHORT_HISTORY)
    assert plan_perturbation(straight_scene, 10, _pert(dy=0.5), off, RAP_SAMPLING)[1] is None


def test_start_leaving_the_road_is_rejected(straight_scene):
    # The drivable area ends at y = -1.3; the ego's box at dy = -0.5 reaches y = -1.5.
    assert plan_perturbation(straight_scene, 10, _pert(dy=-0.5), EXPERT, RAP_SAMPLING) == (None, "off_road")
    assert plan_perturbation(straight_scene, 10, _pert(dy=-0.25), EXPERT, RAP_SAMPLING)[1] is None
    off = RecoveryConfig(target=RecoveryTarget.EXPERT_FUTURE, check_drivable=False, **SHORT_HISTORY)
    assert plan_perturbation(straight_scene, 10, _pert(dy=-0.5), off, RAP_SAMPLING)[1] is None


def test_invalid_window_counts_every_requested_sample(straight_scene):
    plans, rejects = plan_recovery(straight_scene, 45, np.random.default_rng(0), RecoveryConfig(**SHORT_HISTORY), RAP_SAMPLING, 4)
    assert plans == [] and rejects == {"invalid_window": 4}
    assert plan_perturbation(straight_scene, 45, NONE, RecoveryConfig(**SHORT_HISTORY), RAP_SAMPLING) == (None, "invalid_window")


# ----------------------------------------------------------------------------------------------
# Target modes.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scene_name", ["turn_scene", "straight_scene"])
def test_expert_future_of_unperturbed_start_is_the_logged_future(scene_name, request):
    scene = request.getfixturevalue(scene_name)
    plan, reason = plan_perturbation(scene, 10, NONE, EXPERT, RAP_SAMPLING)
    assert reason is None
    logged = future_target(scene, 0, 10, RAP_SAMPLING)
    np.testing.assert_allclose(plan.target.poses, logged.poses, atol=1e-12)
    np.testing.assert_allclose(plan.viewer_pose, scene.agent_pose(0, 10), atol=1e-12)
    np.testing.assert_array_equal(plan.history, history_poses(scene, 0, 10, 4, 0.25))


def test_expert_future_is_the_logged_future_in_the_perturbed_frame(turn_scene):
    p = _pert(dx=0.3, dy=-0.4, dh=0.2, speed=1.1, accel=0.95)
    plan, _ = plan_perturbation(turn_scene, 10, p, EXPERT, RAP_SAMPLING)
    logged = future_target(turn_scene, 0, 10, RAP_SAMPLING).poses
    np.testing.assert_allclose(plan.target.poses, _logged_in_perturbed_frame(logged, p), atol=1e-12)
    # The viewer sits at the perturbed pose, on the logged ground height.
    o = turn_scene.agent_pose(0, 10)
    xy = geometry.from_frame(np.array([p.dx, p.dy]), o[:2], o[3])
    np.testing.assert_allclose(plan.viewer_pose, [xy[0], xy[1], o[2], o[3] + p.dheading], atol=1e-12)
    assert plan.perturbation == p
    st = plan.ego_status
    assert st.speed == pytest.approx(1.1 * 6.0, abs=1e-3)
    assert st.command is DrivingCommand.LEFT  # the route intent is the logged one


def _logged_path(scene, row, step):
    """(K, 2) logged rear-axle positions from ``step`` to the end of its valid run, frame L."""
    valid = scene.tracks.valid[row]
    last = step
    while last + 1 < scene.num_steps and valid[last + 1]:
        last += 1
    world = np.array([scene.agent_pose(row, k)[:2] for k in range(step, last + 1)])
    o = scene.agent_pose(row, step)
    return geometry.to_frame(world, o[:2], o[3])


def _check_limits(roll, cfg):
    """The rollout's controls and its geometry respect the bicycle limits."""
    eps = 1e-9
    k_max = cfg.max_curvature
    assert np.all(np.abs(roll.curvature) <= k_max + eps)
    assert np.all(roll.accel <= cfg.max_accel_mps2 + eps) and np.all(roll.accel >= -cfg.max_decel_mps2 - eps)
    v = roll.states[:, 3]
    v_bound = np.maximum(v[:-1], v[1:])
    assert np.all(v_bound**2 * np.abs(roll.curvature) <= cfg.max_lat_accel_mps2 + 1e-6)
    assert np.all(v >= 0)
    # Independent of the controls: heading change per metre travelled, speed change per second.
    xy = roll.states[:, :2]
    ds = np.linalg.norm(np.diff(xy, axis=0), axis=-1)
    dh = np.abs(geometry.wrap_angle(np.diff(roll.states[:, 2])))
    assert np.all(dh <= k_max * ds * (1 + 1e-3) + 1e-9)  # a chord is slightly shorter than its arc
    dt = np.diff(roll.times)
    dv = np.diff(v) / dt
    assert np.all(dv <= cfg.max_accel_mps2 + 1e-6) and np.all(dv >= -cfg.max_decel_mps2 - 1e-6)


def _check_rejoin(scene, plan, cfg, sampling):
    """The plan's smooth-rejoin target starts at the perturbed pose, stays within the limits and
    ends on the logged path."""
    p = plan.perturbation
    ref = expert_reference(scene, plan.agent_row, plan.step)
    roll = smooth_rejoin(ref, np.array([p.dx, p.dy, p.dheading]), plan.ego_status.speed, sampling, cfg)
    assert roll.converged
    _check_limits(roll, cfg)
    # Starts at the perturbed pose: the origin of the perturbed frame, heading 0, speed v0.
    start_p = _logged_in_perturbed_frame(roll.states[:1, :3], p)[0]
    np.testing.assert_allclose(start_p, 0.0, atol=1e-12)
    assert roll.states[0, 3] == pytest.approx(plan.ego_status.speed)
    # The plan's target is the rollout at the sampling times, in the perturbed frame.
    np.testing.assert_allclose(plan.target.poses, _logged_in_perturbed_frame(roll.poses_at(sampling.times_s), p), atol=1e-9)
    # The first target pose is reachable from (0, 0, heading 0, v0) within the limits.
    dt = sampling.interval_s
    reach = plan.ego_status.speed * dt + 0.5 * cfg.max_accel_mps2 * dt**2
    first = plan.target.poses[0]
    assert np.hypot(first[0], first[1]) <= reach + 1e-9
    assert abs(first[2]) <= cfg.max_curvature * reach + 1e-9
    # Ends on the expert path: every target pose from the horizon on is within 0.2 m of the
    # logged positions (the log polyline from the step to the log's end, in the logged frame).
    line = _logged_path(scene, plan.agent_row, plan.step)
    target_l = _perturbed_to_logged(np.array(plan.target.poses), p)
    after = sampling.times_s >= roll.horizon_s - 1e-9
    assert after.any()
    assert np.all(geometry.point_polyline_distance(target_l[after, :2], line) < 0.2)
    return roll


@pytest.mark.parametrize("preset", ["rap", "wide"])
def test_smooth_rejoin_on_a_turn(turn_scene, preset):
    cfg = RecoveryConfig.preset(preset, **SHORT_HISTORY)
    plans, rejects = plan_recovery(turn_scene, 10, np.random.default_rng(7), cfg, RAP_SAMPLING, 12)
    assert len(plans) == 12 and sum(rejects.values()) == 0
    for plan in plans:
        _check_rejoin(turn_scene, plan, cfg, RAP_SAMPLING)


@pytest.mark.parametrize("sampling", [NAVSIM_SAMPLING, WOD_E2E_SAMPLING])
def test_smooth_rejoin_other_samplings(turn_scene, sampling):
    p = _pert(dx=-0.4, dy=0.5, dh=-math.radians(15), speed=0.8, accel=1.1)
    plan, reason = plan_perturbation(turn_scene, 10, p, RecoveryConfig(**SHORT_HISTORY), sampling)
    assert reason is None and plan.target.poses.shape == (sampling.num_poses, 3)
    _check_rejoin(turn_scene, plan, RecoveryConfig(**SHORT_HISTORY), sampling)


def test_smooth_rejoin_extreme_start_respects_limits_or_is_rejected(turn_scene):
    # 1 m off and 30 deg the wrong way, 3 s horizon: limits hold whether or not it converges.
    cfg = RecoveryConfig(**SHORT_HISTORY)
    ref = expert_reference(turn_scene, 0, 10)
    for start in ([0.0, 1.0, 0.5], [0.0, -1.0, -0.5], [1.0, 1.0, -0.5]):
        roll = smooth_rejoin(ref, np.array(start), 4.0, RAP_SAMPLING, cfg)
        _check_limits(roll, cfg)
    tight = RecoveryConfig(max_steer_rad=math.radians(2), rejoin_horizon_s=1.0, **SHORT_HISTORY)
    p = _pert(dy=0.5, dh=0.2)
    assert plan_perturbation(turn_scene, 10, p, tight, RAP_SAMPLING) == (None, "cannot_rejoin")


def test_stopped_expert_cannot_be_rejoined_from_an_offset(stopped_scene):
    cfg = RecoveryConfig(**SHORT_HISTORY)
    assert plan_perturbation(stopped_scene, 10, _pert(dy=0.5), cfg, RAP_SAMPLING) == (None, "cannot_rejoin")
    plan, reason = plan_perturbation(stopped_scene, 10, NONE, cfg, RAP_SAMPLING)
    assert reason is None
    np.testing.assert_allclose(plan.target.poses, 0.0, atol=1e-9)  # stays where it is


# ----------------------------------------------------------------------------------------------
# plan_recovery: keys, determinism, the real scenario.
# ----------------------------------------------------------------------------------------------


def _signature(plans):
    return [
        (p.key, p.perturbation, p.target.poses.tobytes(), p.viewer_pose.tobytes(), p.ego_status, p.history.tobytes())
        for p in plans
    ]


def test_plan_recovery_is_deterministic(turn_scene):
    cfg = RecoveryConfig.preset("wide", **SHORT_HISTORY)
    runs = [plan_recovery(turn_scene, 10, np.random.default_rng(42), cfg, RAP_SAMPLING, 5, "run") for _ in range(2)]
    assert _signature(runs[0][0]) == _signature(runs[1][0]) and runs[0][1] == runs[1][1]
    other = plan_recovery(turn_scene, 10, np.random.default_rng(43), cfg, RAP_SAMPLING, 5, "run")
    assert _signature(other[0]) != _signature(runs[0][0])
    assert [p.key for p in runs[0][0]] == [f"run_010_recovery_1_{k}" for k in range(5)]


def test_plan_recovery_counts_rejects_and_stops_after_attempts(straight_scene):
    cfg = RecoveryConfig(attempts_per_sample=2, **SHORT_HISTORY)
    plans, rejects = plan_recovery(straight_scene, 10, np.random.default_rng(0), cfg, RAP_SAMPLING, 10)
    assert len(plans) + sum(rejects.values()) <= 20
    assert len(plans) == 10 or len(plans) + sum(rejects.values()) == 20
    assert set(rejects) <= set(REJECT_REASONS) and rejects["overlap"] > 0 and rejects["off_road"] > 0
    assert plan_recovery(straight_scene, 10, np.random.default_rng(0), cfg, RAP_SAMPLING, 0) == ([], {})


def test_recovery_on_womd(womd_scene):
    step = womd_scene.current_index
    # The SDC barely moves: only starts within the rejoin tolerance of its path can "rejoin".
    plans, rejects = plan_recovery(womd_scene, step, np.random.default_rng(0), RecoveryConfig(**SHORT_HISTORY), RAP_SAMPLING, 10)
    assert rejects["cannot_rejoin"] > 0 and set(rejects) <= set(REJECT_REASONS)
    for plan in plans:
        assert plan.target.poses.shape == (10, 3) and plan.agent_row == womd_scene.ego_index
        assert abs(plan.perturbation.dy) < 0.2 + 1e-9
    plans_e, rejects_e = plan_recovery(womd_scene, step, np.random.default_rng(0), EXPERT, RAP_SAMPLING, 10)
    assert len(plans_e) == 10 and set(rejects_e) <= {"overlap", "off_road"}
    assert len({p.key for p in plans_e}) == 10
    # A moving vehicle's seat (row 22, ~10 m/s): smooth rejoins are accepted and reach its path.
    moving = recenter(womd_scene, 22)
    for sampling in (RAP_SAMPLING, WOD_E2E_SAMPLING):
        plans_m, _ = plan_recovery(moving, step, np.random.default_rng(1), RecoveryConfig(**SHORT_HISTORY), sampling, 5)
        assert len(plans_m) == 5
        for plan in plans_m:
            assert plan.agent_row == 22 and plan.target.poses.shape == (sampling.num_poses, 3)
            _check_rejoin(moving, plan, RecoveryConfig(**SHORT_HISTORY), sampling)
    # The unperturbed rejoin stays close to the logged future.
    ref = expert_reference(moving, 22, step)
    v = float(np.hypot(*agent_velocity(moving, 22, step)))
    roll = smooth_rejoin(ref, np.zeros(3), v, RAP_SAMPLING, RecoveryConfig(**SHORT_HISTORY))
    logged = future_target(moving, 22, step, RAP_SAMPLING).poses
    assert roll.converged
    assert np.abs(roll.poses_at(RAP_SAMPLING.times_s)[:, 1:] - logged[:, 1:]).max() < 0.05


def test_batched_rejoin_equals_one_at_a_time(turn_scene):
    from rap.augment.recovery import expert_reference, smooth_rejoin, smooth_rejoin_batch

    cfg = RecoveryConfig.preset("wide", **SHORT_HISTORY)
    ref = expert_reference(turn_scene, turn_scene.ego_index, turn_scene.current_index)
    rng = np.random.default_rng(3)
    starts = np.column_stack([rng.uniform(-1, 1, 6), rng.uniform(-1, 1, 6), rng.uniform(-0.4, 0.4, 6)])
    speeds = rng.uniform(0.0, 12.0, 6)
    batch = smooth_rejoin_batch(ref, starts, speeds, RAP_SAMPLING, cfg)
    for start, speed, got in zip(starts, speeds, batch):
        one = smooth_rejoin(ref, start, float(speed), RAP_SAMPLING, cfg)
        np.testing.assert_allclose(got.states, one.states, atol=1e-9)
        np.testing.assert_allclose(got.lateral_error, one.lateral_error, atol=1e-9)
        assert got.converged == one.converged


def test_recovery_batch_over_agents_equals_one_agent_at_a_time(turn_scene):
    from rap.augment.cross_agent import recenter
    from rap.augment.recovery import plan_recovery_batch

    cfg = RecoveryConfig.preset("rap", **SHORT_HISTORY)
    step = turn_scene.current_index
    rows = [turn_scene.ego_index] + [r for r in range(turn_scene.tracks.num_agents) if r != turn_scene.ego_index][:2]
    scenes = [recenter(turn_scene, r) for r in rows]
    batch = plan_recovery_batch([(s, np.random.default_rng(k), None) for k, s in enumerate(scenes)], step, cfg, RAP_SAMPLING, 3)
    for k, (s, (plans, rejects)) in enumerate(zip(scenes, batch)):
        one_plans, one_rejects = plan_recovery(s, step, np.random.default_rng(k), cfg, RAP_SAMPLING, 3)
        assert rejects == one_rejects and [p.key for p in plans] == [p.key for p in one_plans]
        for a, b in zip(plans, one_plans):
            np.testing.assert_allclose(a.target.poses, b.target.poses, atol=1e-9)
