"""The four behaviours where rap follows NAVSIM's official scorer (navsim main for EPDMS, v1.1 for
PDMS) rather than its documentation, each pinned on hand-built inputs with the expected numbers
worked out by hand from the official formula."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rap.metrics import ObjectKind, PDMScorerConfig, score_scene
from rap.metrics.pdms import ego_progress, ego_progress_v2, objects_clear_of_ego
from rap.sim import LQRConfig, RolloutConfig
from rap.sim.tracker import fit_profiles


# -- 1. the tracker's velocity regularizer -----------------------------------------------------
def test_velocity_fit_is_navsims_banded_matrix_by_default():
    """Four displacements of 1 m, 1 m, 1 m, 3 m at dt = 1 s (M = 4, x = (v0, a0, a1, a2)).

    Official batch matrix: band = zeros((2, 3)); band[:, 1:] = eye(2); band[:, :-1] = -eye(2)
    -> [[-1, 0, 0], [0, -1, 1]], R = [[0, -1, 0, 0], [0, 0, -1, 1]]. With C the displacement map
    (row i: dt for v0, dt^2 for a_0 .. a_{i-1}) the fit solves (C'C + lambda R'R) x = C'd; the
    velocity profile is v0 + cumsum(a) * dt."""
    d = np.array([1.0, 1.0, 1.0, 3.0])
    c = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=float)
    lam = 0.5
    expected = {}
    for kind, r in (("navsim", [[0, -1, 0, 0], [0, 0, -1, 1]]), ("nuplan", [[0, -1, 1, 0], [0, 0, -1, 1]])):
        r = np.array(r, dtype=float)
        x = np.linalg.solve(c.T @ c + lam * r.T @ r, c.T @ d)
        expected[kind] = x[0] + np.concatenate([[0.0], np.cumsum(x[1:])])
    poses = np.zeros((1, 5, 3))
    poses[0, 1:, 0] = np.cumsum(d)
    for kind in ("navsim", "nuplan"):
        velocity, _ = fit_profiles(poses, 1.0, LQRConfig(jerk_penalty=lam, velocity_regularizer=kind))
        np.testing.assert_allclose(velocity[0], expected[kind], rtol=1e-9, err_msg=kind)
    assert not np.allclose(expected["navsim"], expected["nuplan"])
    default, _ = fit_profiles(poses, 1.0, LQRConfig(jerk_penalty=lam))
    np.testing.assert_allclose(default[0], expected["navsim"], rtol=1e-9)


# -- 2. EP in v2: raw progress over the best penalized progress --------------------------------
def test_ep_v2_divides_raw_progress_by_the_best_penalized_progress():
    progress = np.array([20.0, 20.0, 3.0, 12.0])
    mult = np.array([0.5, 1.0, 1.0, 0.0])  # e.g. a static-object hit (NC 0.5), clean, clean, penalized to 0
    # reference: 16 m after its own penalties. Pairs' best penalized: max(10, 16), max(20, 16), max(3, 16), max(0, 16).
    np.testing.assert_allclose(ego_progress_v2(progress, mult, 16.0), [min(20 / 16, 1.0), 1.0, 3 / 16, 12 / 16])
    # v1 keeps the penalized numerator: 10 / 16 for the static-object hit.
    np.testing.assert_allclose(ego_progress(progress, mult, 16.0), [10 / 16, 1.0, 3 / 16, 0.0])
    # Both below 5 m: 1 in v2 even when penalized (the product zeroes the score anyway).
    np.testing.assert_allclose(ego_progress_v2(np.array([2.0, 1.0]), np.array([1.0, 0.0]), 4.0), [1.0, 1.0])


def test_ep_v2_in_a_scene_with_a_penalized_proposal(scene_factory, plan_factory):
    """A plan that runs over a traffic cone in its lane (NC 0.5, a static object): EPDMS's EP is
    its raw progress over the pair's best penalized progress; PDMS v1's EP uses its penalized
    progress."""
    cone = dict(x=30.0, length=0.5, width=0.5, kind=ObjectKind.STATIC_OBJECT)
    scene = scene_factory(objects=[cone])
    r = score_scene(scene, plan_factory(10.0), config=PDMScorerConfig(human_penalty_filter=False))
    mult = r.no_at_fault_collisions * r.drivable_area_compliance * r.driving_direction_compliance * r.traffic_light_compliance
    assert mult[0] == 0.5
    best = max(r.raw_progress[0] * mult[0], r.reference_progress)
    assert best > 5.0
    assert r.ego_progress[0] == pytest.approx(min(r.raw_progress[0] / best, 1.0), rel=1e-12)
    assert r.ego_progress[0] > r.ego_progress_v1[0]


# -- 3. the human filter never filters EP ------------------------------------------------------
def test_human_filter_keeps_the_agents_ep(scene_factory, plan_factory):
    """The logged human drives into the oncoming lane (its penalty product is 0). Scored alone,
    its v2 EP is raw / raw = 1, so EP is never forgiven: an agent that barely moves keeps its
    low EP (DDC and LK, which the human fails, are forgiven)."""
    scene = scene_factory(human_trajectory=plan_factory(10.0, lateral=3.5))
    slow = plan_factory(1.0)
    filtered = score_scene(scene, slow)
    unfiltered = score_scene(scene, slow, config=PDMScorerConfig(human_penalty_filter=False))
    assert filtered.human_filtered
    assert filtered.ego_progress[0] == unfiltered.ego_progress[0] < 0.5
    # EPDMS = NC DAC DDC TLC (5 EP + 5 TTC + 2 LK + 2 HC) / 14 without a previous plan (EC not
    # scored), from the filtered sub-scores; the EP term is the agent's own.
    f = filtered
    mult = f.no_at_fault_collisions[0] * f.drivable_area_compliance[0] * f.driving_direction_compliance[0] * f.traffic_light_compliance[0]
    expected = mult * (5 * f.ego_progress[0] + 5 * f.time_to_collision_within_bound[0] + 2 * f.lane_keeping[0] + 2 * f.history_comfort[0]) / 14
    assert mult == 1.0 and f.epdms[0] == pytest.approx(expected, rel=1e-12) and f.epdms[0] < (5 + 5 + 2 + 2) / 14


# -- 4. v2 drops tracks that overlap the ego at t = 0 --------------------------------------------
def test_v2_drops_objects_overlapping_the_ego_at_the_start(scene_factory, plan_factory):
    """A parked car overlapping the ego's box at t = 0 (a labelling glitch in real logs): PDMS v1
    counts the contact (NC 0, PDMS 0); EPDMS's log replay drops that track, so the same plan scores
    as on an empty road; a car 30 m ahead is kept by both."""
    overlapping = dict(x=2.0, y=0.5)  # centre near the ego's (rear axle at 0, centre ~1.5 m ahead)
    far = dict(x=60.0, y=3.5)  # in the oncoming lane, never touched
    scene = scene_factory(objects=[overlapping, far])
    clear = objects_clear_of_ego(scene)
    assert len(scene.objects) == 2 and len(clear.objects) == 1 and clear.objects.x[0, 0] == 60.0
    assert objects_clear_of_ego(scene_factory(objects=[far])) is not None
    plan = plan_factory(10.0)
    r = score_scene(scene, plan)
    empty = score_scene(scene_factory(objects=[far]), plan)
    assert r.v1_no_at_fault_collisions[0] == 0.0 and r.pdms[0] == 0.0
    assert r.no_at_fault_collisions[0] == 1.0
    assert r.epdms[0] == pytest.approx(empty.epdms[0], rel=1e-12)
    # A scene where nothing overlaps is returned unchanged (no second scoring pass).
    untouched = scene_factory(objects=[far])
    assert objects_clear_of_ego(untouched) is untouched


def test_regularizer_option_reaches_the_scorer(scene_factory, plan_factory):
    """``tracker.velocity_regularizer=nuplan`` (PDMScorerConfig.rollout.lqr) changes the executed
    rollout of a braking plan; the default is the official one."""
    scene = scene_factory()
    brake = plan_factory(10.0, accel=-4.0)
    navsim = score_scene(scene, brake)
    nuplan_cfg = PDMScorerConfig(rollout=RolloutConfig(lqr=LQRConfig(velocity_regularizer="nuplan")))
    nuplan = score_scene(scene, brake, config=nuplan_cfg)
    assert dataclasses.asdict(PDMScorerConfig().rollout.lqr)["velocity_regularizer"] == "navsim"
    assert not np.array_equal(navsim.states, nuplan.states)
