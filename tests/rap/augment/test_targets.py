"""Tests for rap/augment/targets.py on hand-built scenes (tests/rap/augment/conftest.py) and the
shipped WOMD scenario."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rap.augment.targets import EgoConfig, InvalidWindowError, ego_plan, sample_key
from rap.dataset.sample import SampleKind
from rap.kinematics import (
    DrivingCommand,
    agent_acceleration,
    agent_poses_at,
    agent_velocity,
    driving_command,
    ego_status,
    future_target,
    history_poses,
    window_valid,
)
from rap.trajectory import NAVSIM_SAMPLING, RAP_SAMPLING, WOD_E2E_SAMPLING, Trajectory, TrajectorySampling

# WOMD-like test logs hold 1 s of history before the current step (the product default is 1.5 s).
SHORT_HISTORY = dict(history_num=4, history_interval_s=0.25)


def test_future_target_straight_is_exact(straight_scene):
    fut = future_target(straight_scene, 0, 10, RAP_SAMPLING)
    assert fut.poses.shape == (10, 3)
    t = RAP_SAMPLING.times_s
    np.testing.assert_allclose(fut.poses, np.stack([10.0 * t, 0 * t, 0 * t], -1), atol=1e-9)


@pytest.mark.parametrize("sampling", [NAVSIM_SAMPLING, RAP_SAMPLING, WOD_E2E_SAMPLING, TrajectorySampling(7, 0.35)])
def test_future_target_interpolates_between_log_steps(turn_scene, sampling):
    fut = future_target(turn_scene, 0, 10, sampling)
    assert fut.poses.shape == (sampling.num_poses, 3)
    # Analytic: straight for 0.5 s at 6 m/s, then a left arc of radius 15 m.
    t = sampling.times_s
    s = 6.0 * (t - 0.5)
    arc = np.clip(s, 0, None) / 15.0
    expected = np.stack([np.where(s < 0, s, 15 * np.sin(arc)) + 3.0, np.where(s < 0, 0, 15 * (1 - np.cos(arc))), arc], -1)
    # Linear interpolation of an arc between 0.1 s samples is off by at most the sagitta (~1 mm).
    np.testing.assert_allclose(fut.poses, expected, atol=5e-3)


def test_future_target_none_when_invalid_or_beyond_log(straight_scene):
    assert future_target(straight_scene, 5, 10, RAP_SAMPLING) is None  # invalid until step 30
    assert future_target(straight_scene, 5, 40, RAP_SAMPLING) is not None
    assert future_target(straight_scene, 0, 50, RAP_SAMPLING) is None  # 5 s past step 50 > 9 s log
    assert future_target(straight_scene, 0, 40, RAP_SAMPLING) is not None  # ends exactly at the log end
    assert agent_poses_at(straight_scene, 0, np.array([-0.05])) is None


def test_history_poses(straight_scene):
    hist = history_poses(straight_scene, 0, 10, 4, 0.25)
    np.testing.assert_allclose(hist[:, 0], [-10.0, -7.5, -5.0, -2.5], atol=1e-9)
    np.testing.assert_allclose(hist[:, 1:], 0.0, atol=1e-12)
    assert history_poses(straight_scene, 0, 10, 0, 0.5).shape == (0, 3)
    assert history_poses(straight_scene, 0, 10, 3, 0.5) is None  # 1.5 s back is before the log
    assert history_poses(straight_scene, 5, 32, 4, 0.5) is None  # before the agent appears


def test_window_valid(straight_scene):
    assert window_valid(straight_scene, 0, 10, RAP_SAMPLING, 4, 0.25)
    assert not window_valid(straight_scene, 0, 10, RAP_SAMPLING, 4, 0.5)
    assert not window_valid(straight_scene, 0, 41, RAP_SAMPLING, 0, 0.5)
    assert window_valid(straight_scene, 0, 40, RAP_SAMPLING, 0, 0.5)
    assert not window_valid(straight_scene, 5, 31, RAP_SAMPLING, 4, 0.25)
    assert window_valid(straight_scene, 5, 40, RAP_SAMPLING, 4, 0.25)


def test_ego_status_straight_and_accelerating(straight_scene):
    v = agent_velocity(straight_scene, 0, 10)
    np.testing.assert_allclose(v, [10.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(agent_acceleration(straight_scene, 0, 10), [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(agent_acceleration(straight_scene, 3, 10), [2.0, 0.0], atol=1e-6)
    st = ego_status(straight_scene, 0, 10, future_target(straight_scene, 0, 10, RAP_SAMPLING))
    assert st.speed == pytest.approx(10.0) and st.command is DrivingCommand.STRAIGHT
    assert isinstance(st.velocity[0], float) and isinstance(st.acceleration[1], float)


def test_ego_status_on_an_arc_is_the_rear_axle_s(turn_scene):
    # Step 30 is well inside the turn: speed 6 m/s, radius 15 m.
    v = agent_velocity(turn_scene, 0, 30)
    np.testing.assert_allclose(v, [6.0, 0.0], atol=0.02)  # no side slip at the rear axle
    a = agent_acceleration(turn_scene, 0, 30)
    np.testing.assert_allclose(a, [0.0, 36.0 / 15.0], atol=0.05)  # centripetal v^2 / R, left


def test_driving_command_rule(turn_scene, straight_scene):
    assert driving_command(future_target(turn_scene, 0, 10, RAP_SAMPLING)) is DrivingCommand.LEFT
    assert driving_command(future_target(turn_scene, 1, 10, RAP_SAMPLING)) is DrivingCommand.RIGHT
    assert driving_command(future_target(straight_scene, 0, 10, RAP_SAMPLING)) is DrivingCommand.STRAIGHT
    s = TrajectorySampling(2, 0.5)
    assert driving_command(Trajectory(np.array([[5, 1, 0], [10, 1.99, 0]]), s)) is DrivingCommand.STRAIGHT
    assert driving_command(Trajectory(np.array([[5, 1, 0], [10, 2.01, 0]]), s)) is DrivingCommand.LEFT
    assert driving_command(Trajectory(np.array([[5, 1, 0], [10, -2.5, 0]]), s), lateral_threshold_m=3.0) is DrivingCommand.STRAIGHT


def test_sample_key_is_filesystem_safe():
    assert sample_key("637f20cafde22ff8", 10, SampleKind.RECOVERY, 2406, 3) == "637f20cafde22ff8_010_recovery_2406_3"
    assert sample_key("a/b c:d", 7, SampleKind.CROSS_AGENT, 5, 0) == "a-b-c-d_007_cross_agent_5_0"


def test_ego_plan(straight_scene):
    plan = ego_plan(straight_scene, 10, EgoConfig(**SHORT_HISTORY))
    assert plan.key == "straight_010_ego_2406_0"
    assert plan.kind is SampleKind.EGO and plan.agent_row == 0 and plan.agent_id == 2406
    np.testing.assert_array_equal(plan.viewer_pose, straight_scene.agent_pose(0, 10))
    assert plan.history.shape == (4, 3) and plan.target.poses.shape == (10, 3)
    assert plan.perturbation is None
    assert ego_plan(straight_scene, 10, EgoConfig(**SHORT_HISTORY), key_prefix="x").key == "x_010_ego_2406_0"
    with pytest.raises(InvalidWindowError, match="straight"):
        ego_plan(straight_scene, 45, EgoConfig(**SHORT_HISTORY))
    with pytest.raises(ValueError, match="history_num"):
        EgoConfig(history_num=-1)


@pytest.mark.parametrize("sampling", [NAVSIM_SAMPLING, RAP_SAMPLING, WOD_E2E_SAMPLING])
def test_ego_plan_on_womd(womd_scene, sampling):
    plan = ego_plan(womd_scene, womd_scene.current_index, EgoConfig(sampling=sampling, **SHORT_HISTORY))
    assert plan.target.poses.shape == (sampling.num_poses, 3)
    assert plan.agent_row == womd_scene.ego_index
    # The SDC of the shipped scenario barely moves.
    assert plan.ego_status.speed < 0.05 and plan.ego_status.command is DrivingCommand.STRAIGHT
    assert np.abs(plan.target.xy).max() < 0.1
    # Unchanged by a copy of the scene: plans depend only on the scene's data.
    again = ego_plan(dataclasses.replace(womd_scene), womd_scene.current_index, EgoConfig(sampling=sampling, **SHORT_HISTORY))
    np.testing.assert_array_equal(plan.target.poses, again.target.poses)
