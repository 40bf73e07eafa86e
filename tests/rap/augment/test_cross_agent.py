"""Tests for rap/augment/cross_agent.py on hand-built scenes and the shipped WOMD scenario."""

from __future__ import annotations

import numpy as np
import pytest

from rap.augment.cross_agent import (
    REJECT_REASONS,
    CrossAgentConfig,
    candidates,
    constant_velocity_error,
    plan_cross_agent,
    recenter,
)
from rap.dataset.sample import SampleKind
from rap.kinematics import DrivingCommand, agent_velocity, future_target, history_poses, window_valid
from rap.scene import AgentType
from rap.trajectory import NAVSIM_SAMPLING, RAP_SAMPLING, WOD_E2E_SAMPLING

# WOMD-like test logs hold 1 s of history before the current step (the product default is 1.5 s).
SHORT_HISTORY = dict(history_num=4, history_interval_s=0.25)

# Moving vehicles of the shipped scenario valid over 1 s of history + 5 s of future at step 10,
# and the two among them whose motion a constant-velocity model explains (rows 21 and 40, at
# ~13.6 and ~10.5 m/s straight: mean extrapolation errors 0.23 and 0.35 m).
WOMD_MOVING = [18, 20, 21, 22, 23, 40, 41, 42, 45]
WOMD_CANDIDATES = [18, 20, 22, 23, 41, 42, 45]


def test_constant_velocity_error(straight_scene):
    assert constant_velocity_error(straight_scene, 2, 10, RAP_SAMPLING) == pytest.approx(0.0, abs=1e-9)
    # 2 m/s^2 from 8 m/s: the error at t is t^2, averaged over t = 0.5 .. 5 s.
    expected = np.mean(RAP_SAMPLING.times_s**2)
    assert constant_velocity_error(straight_scene, 3, 10, RAP_SAMPLING) == pytest.approx(expected, rel=1e-6)
    assert constant_velocity_error(straight_scene, 5, 10, RAP_SAMPLING) is None


def test_candidates_and_reject_reasons(straight_scene):
    cfg = CrossAgentConfig(**SHORT_HISTORY)
    # Row 1 parked and row 2 at constant speed are trivial, row 3 accelerates, row 4 is a
    # pedestrian, row 5 appears too late; row 0 is the ego.
    assert candidates(straight_scene, 10, cfg, RAP_SAMPLING) == [3]
    plans, rejects = plan_cross_agent(straight_scene, 10, cfg, RAP_SAMPLING)
    assert [p.agent_row for p in plans] == [3]
    assert rejects == {"trivial_motion": 2, "type": 1, "invalid_window": 1}
    assert set(rejects) <= set(REJECT_REASONS)
    # Thresholds: no motion filter keeps every vehicle valid over the window; a speed floor of
    # 9 m/s drops row 3 (8 m/s at the step).
    loose = CrossAgentConfig(min_cv_error_m=0.0, **SHORT_HISTORY)
    assert candidates(straight_scene, 10, loose, RAP_SAMPLING) == [2, 3]
    assert candidates(straight_scene, 10, CrossAgentConfig(min_speed_mps=9.0, **SHORT_HISTORY), RAP_SAMPLING) == []
    _, slow = plan_cross_agent(straight_scene, 10, CrossAgentConfig(min_speed_mps=9.0, **SHORT_HISTORY), RAP_SAMPLING)
    assert slow["slow"] == 1
    people = CrossAgentConfig(min_cv_error_m=0.0, agent_types=(AgentType.PEDESTRIAN,), **SHORT_HISTORY)
    assert candidates(straight_scene, 10, people, RAP_SAMPLING) == [4]
    # Row 5 is valid from step 30: a candidate window must start after it appears.
    assert 5 not in candidates(straight_scene, 32, loose, RAP_SAMPLING)
    assert 5 in candidates(straight_scene, 40, loose, RAP_SAMPLING, history_num=2, history_interval_s=0.5)


def test_config_validation():
    with pytest.raises(ValueError, match="min_cv_error_m"):
        CrossAgentConfig(min_cv_error_m=-1.0, **SHORT_HISTORY)
    with pytest.raises(ValueError, match="agent_types"):
        CrossAgentConfig(agent_types=(42,), **SHORT_HISTORY)
    with pytest.raises(ValueError, match="history_interval_s"):
        CrossAgentConfig(history_interval_s=0.0)


def test_recenter_keeps_tracks(turn_scene):
    scene = recenter(turn_scene, 1)
    assert scene.ego_index == 1 and scene.tracks is turn_scene.tracks and scene.map is turn_scene.map
    np.testing.assert_array_equal(scene.ego_pose(10), turn_scene.agent_pose(1, 10))
    with pytest.raises(ValueError, match="out of range"):
        recenter(turn_scene, 2)


def test_plan_is_the_agent_s_own_view(turn_scene):
    # In the turn scene the ego turns left and row 1 turns right.
    plans, _ = plan_cross_agent(turn_scene, 10, CrossAgentConfig(**SHORT_HISTORY), RAP_SAMPLING, key_prefix="t")
    assert len(plans) == 1
    plan = plans[0]
    assert plan.key == "t_010_cross_agent_2_0" and plan.kind is SampleKind.CROSS_AGENT
    assert plan.agent_row == 1 and plan.agent_id == 2 and plan.perturbation is None
    np.testing.assert_array_equal(plan.viewer_pose, turn_scene.agent_pose(1, 10))
    np.testing.assert_array_equal(plan.target.poses, future_target(turn_scene, 1, 10, RAP_SAMPLING).poses)
    np.testing.assert_array_equal(plan.history, history_poses(turn_scene, 1, 10, 4, 0.25))
    assert plan.ego_status.command is DrivingCommand.RIGHT
    assert plan.ego_status.speed == pytest.approx(6.0, abs=1e-3)
    # The same plan from the recentred scene's point of view: the original ego is now a candidate.
    other = plan_cross_agent(recenter(turn_scene, 1), 10, CrossAgentConfig(**SHORT_HISTORY), RAP_SAMPLING)[0]
    assert [p.agent_row for p in other] == [0] and other[0].ego_status.command is DrivingCommand.LEFT


def test_cross_agent_on_womd(womd_scene):
    step = womd_scene.current_index
    tr = womd_scene.tracks
    cfg = CrossAgentConfig(**SHORT_HISTORY)
    # Every vehicle valid over the window that moves (> 0.5 m/s at the step) ...
    moving = [
        r for r in range(tr.num_agents)
        if r != womd_scene.ego_index and tr.types[r] == AgentType.VEHICLE
        and window_valid(womd_scene, r, step, RAP_SAMPLING, cfg.history_num, cfg.history_interval_s)
        and np.hypot(*agent_velocity(womd_scene, r, step)) > 0.5
    ]  # fmt: skip
    assert moving == WOMD_MOVING
    assert candidates(womd_scene, step, CrossAgentConfig(min_cv_error_m=0.0, min_speed_mps=0.5, **SHORT_HISTORY), RAP_SAMPLING) == moving
    # ... minus the ones a constant-velocity model explains.
    plans, rejects = plan_cross_agent(womd_scene, step, cfg, RAP_SAMPLING)
    assert [p.agent_row for p in plans] == WOMD_CANDIDATES
    assert sum(rejects.values()) + len(plans) == tr.num_agents - 1
    assert rejects["type"] == int(np.sum(tr.types != AgentType.VEHICLE))
    assert len({p.key for p in plans}) == len(plans)
    for plan in plans:
        assert plan.target.poses.shape == (10, 3) and plan.history.shape == (4, 3)
        assert plan.key == f"{womd_scene.scene_id}_010_cross_agent_{plan.agent_id}_0"
    # Vehicle 1675 (row 42) curves right over the next 5 s.
    assert {p.agent_row: p.ego_status.command for p in plans}[42] is DrivingCommand.RIGHT
    for sampling in (NAVSIM_SAMPLING, WOD_E2E_SAMPLING):
        for plan in plan_cross_agent(womd_scene, step, cfg, sampling)[0]:
            assert plan.target.poses.shape == (sampling.num_poses, 3)
