"""Tests for rap/metrics/pdms.py: sub-metrics alone, sanity scenarios end to end, aggregation,
batch shapes, and a proposal-by-proposal cross-check against the naive NAVSIM-style scorer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely

from rap.perf import bench_score, synthetic_proposals, synthetic_scoring_scene
from rap.metrics import EgoState, PDMScorerConfig, PreviousPlan, aggregate_v1, aggregate_v2, prepare_scene, score_scene
from rap.metrics.pdm_naive import naive_score_scene
from rap.metrics.pdms import (
    driving_direction_compliance,
    drivable_area_compliance,
    ego_progress,
    lane_keeping,
    raw_progress,
    traffic_light_compliance,
    weighted_score,
)
from rap.trajectory import TrajectorySampling

# ------------------------------------------------------------------------------------------------
# Sub-metrics alone (pure functions on hand-built arrays).
# ------------------------------------------------------------------------------------------------


def test_drivable_area_compliance():
    off = np.zeros((3, 41), dtype=bool)
    off[1, 20] = True
    off[2] = True
    np.testing.assert_array_equal(drivable_area_compliance(off), [1.0, 0.0, 0.0])


def test_driving_direction_compliance_thresholds_and_intersections():
    t = np.arange(41)
    centers = np.stack([np.stack([v * 0.1 * t, 0.0 * t], axis=-1) for v in (10.0, 10.0, 10.0, 3.0)])
    oncoming = np.zeros((4, 41), dtype=bool)
    oncoming[1, 5:7] = True  # 2 steps: 2 m in any 1 s window -> 0.5 (not < 2 m)
    oncoming[2, 5:30] = True  # 10 m in a 1 s window -> 0
    oncoming[3, :] = True  # 3 m/s: 3.0 m per 1 s window (11 samples, 10 displacements) -> 0.5
    inter = np.zeros((4, 41), dtype=bool)
    np.testing.assert_array_equal(driving_direction_compliance(centers, oncoming, inter, 0.1), [1.0, 0.5, 0.0, 0.5])
    inter[2, :] = True  # inside an intersection nothing counts
    assert driving_direction_compliance(centers, oncoming, inter, 0.1)[2] == 1.0


def test_traffic_light_compliance():
    red = shapely.box(10, -2, 20, 2)
    boxes = np.stack([np.stack([[x + 2, -1], [x + 2, 1], [x - 2, 1], [x - 2, -1]]) for x in (0.0, 9.0, 15.0)])
    corners = np.stack([np.repeat(boxes[i][None], 5, axis=0) for i in range(3)])  # (3, 5, 4, 2)
    lights = [(red,)] * 5
    np.testing.assert_array_equal(traffic_light_compliance(corners, lights), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(traffic_light_compliance(corners, [()] * 5), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(traffic_light_compliance(corners, [()] * 4 + [(red,)]), [1.0, 0.0, 0.0])


def test_lane_keeping_needs_two_seconds_in_a_row():
    dev = np.zeros((4, 41), dtype=bool)
    dev[1, 0:19] = True  # 1.9 s
    dev[2, 10:30] = True  # 2.0 s
    dev[3, 10:20] = dev[3, 21:31] = True  # broken by one step in the lane
    inter = np.zeros((4, 41), dtype=bool)
    np.testing.assert_array_equal(lane_keeping(dev, inter, 0.1), [1.0, 1.0, 0.0, 1.0])
    inter[3, 20] = True  # the break is in an intersection: skipped, the run continues
    assert lane_keeping(dev, inter, 0.1)[3] == 0.0


def test_ego_progress_normalisation():
    progress = np.array([40.0, 20.0, 40.0, 3.0])
    mult = np.array([1.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(ego_progress(progress, mult, 30.0), [1.0, 20 / 30, 0.0, 0.1])
    # Both below 5 m: 1 unless penalized to 0.
    np.testing.assert_allclose(ego_progress(np.array([2.0, 1.0]), np.array([1.0, 0.0]), 4.0), [1.0, 0.0])


def test_raw_progress_and_weighted_score():
    line = shapely.LineString([(0, 0), (100, 0)])
    np.testing.assert_allclose(raw_progress(line, np.array([[10, 1], [10, 1]]), np.array([[30, -2], [5, 0]])), [20.0, 0.0])
    mult = np.array([[1.0, 0.5], [1.0, 1.0]])
    weighted = np.array([[1.0, 1.0], [0.0, 1.0], [np.nan, np.nan]])
    np.testing.assert_allclose(weighted_score(mult, weighted, np.array([5.0, 5.0, 2.0])), [0.5, 0.5])


def test_aggregation():
    assert aggregate_v1([1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert aggregate_v2([1.0, 0.0]) == pytest.approx(0.5)
    first = np.array([1.0, 0.5])
    ends = np.array([[10.0, 0.0], [0.0, 0.0]])
    second = [(np.array([0.0, 1.0]), np.array([[10.0, 0.0], [11.0, 0.0]])), (np.array([]), np.zeros((0, 2)))]
    w = np.exp(-np.array([0.0, 1.0]) / 0.2)
    want = (0.5 * (1.0 + (w / w.sum()) @ np.array([0.0, 1.0])) + 0.5) / 2
    assert aggregate_v2(first, ends, second) == pytest.approx(want)
    with pytest.raises(ValueError):
        aggregate_v2(first, None, second)


# ------------------------------------------------------------------------------------------------
# Sanity scenarios end to end (simulate + score).
# ------------------------------------------------------------------------------------------------


def test_smooth_lane_following_scores_high(scene_factory, plan_factory):
    r = score_scene(scene_factory(), plan_factory(10.0))
    assert r.pdms[0] >= 0.9 and r.epdms[0] >= 0.9
    for name in ("no_at_fault_collisions", "drivable_area_compliance", "driving_direction_compliance", "traffic_light_compliance", "lane_keeping", "comfort", "history_comfort"):
        assert getattr(r, name)[0] == 1.0, name


def test_driving_into_a_stopped_car_gets_nc_zero(scene_factory, plan_factory):
    r = score_scene(scene_factory(objects=[dict(x=25.0)]), plan_factory(10.0))
    assert r.no_at_fault_collisions[0] == 0.0 and r.pdms[0] == 0.0 and r.epdms[0] == 0.0


def test_leaving_the_road_gets_dac_zero(scene_factory, plan_factory):
    r = score_scene(scene_factory(), plan_factory(10.0, lateral=-6.0))
    assert r.drivable_area_compliance[0] == 0.0 and r.pdms[0] == 0.0


def test_running_a_red_light_gets_tlc_zero(scene_factory, plan_factory):
    scene = scene_factory(ego_x=60.0, red_light=True)
    r = score_scene(scene, np.stack([plan_factory(10.0), plan_factory(0.0, accel=0.0)]), config=PDMScorerConfig(human_penalty_filter=False))
    assert r.traffic_light_compliance[0] == 0.0 and r.epdms[0] == 0.0
    assert r.pdms[0] > 0.0  # PDMS v1 has no traffic-light term


def test_standing_still_gets_low_ep(scene_factory, plan_factory):
    r = score_scene(scene_factory(ego_speed=0.0, with_history=False), plan_factory(0.0))
    assert r.ego_progress[0] < 0.1 and r.ego_progress_v1[0] < 0.1
    assert r.reference_progress > 5.0


def test_zigzag_fails_comfort(scene_factory, plan_factory):
    r = score_scene(scene_factory(), plan_factory(10.0, wiggle=1.5, period=1.0))
    assert r.comfort[0] == 0.0 and r.history_comfort[0] == 0.0


def test_lane_change_into_oncoming_traffic_fails_ddc_and_lk(scene_factory, plan_factory):
    r = score_scene(scene_factory(), plan_factory(10.0, lateral=3.5))
    assert r.driving_direction_compliance[0] == 0.0 and r.lane_keeping[0] == 0.0 and r.epdms[0] == 0.0


def test_human_filter_forgives_what_the_human_also_fails(scene_factory, plan_factory):
    # The logged human also drives into the oncoming lane: DDC and LK are forgiven for the agent.
    scene = scene_factory(human_trajectory=plan_factory(10.0, lateral=3.5))
    r = score_scene(scene, plan_factory(10.0, lateral=3.5))
    assert r.human_filtered
    assert r.driving_direction_compliance[0] == 1.0 and r.lane_keeping[0] == 1.0 and r.epdms[0] > 0.9
    off = score_scene(scene, plan_factory(10.0, lateral=3.5), config=PDMScorerConfig(human_penalty_filter=False))
    assert not off.human_filtered and off.epdms[0] == 0.0


def test_extended_comfort_needs_a_previous_plan(scene_factory, plan_factory):
    scene = scene_factory()
    same = PreviousPlan(ego=EgoState(x=-5.0, y=0.0, heading=0.0, vx=10.0), poses=plan_factory(10.0))
    jumpy = PreviousPlan(ego=EgoState(x=-5.0, y=0.0, heading=0.0, vx=10.0), poses=plan_factory(10.0, accel=-3.0, lateral=2.0))
    r0 = score_scene(scene, plan_factory(10.0))
    assert np.isnan(r0.extended_comfort[0]) and r0.epdms[0] == pytest.approx(1.0)
    r1 = score_scene(dataclasses.replace(scene, previous_plan=same), plan_factory(10.0))
    r2 = score_scene(dataclasses.replace(scene, previous_plan=jumpy), plan_factory(10.0))
    assert r1.extended_comfort[0] == 1.0 and r2.extended_comfort[0] == 0.0
    assert r2.epdms[0] == pytest.approx(14.0 / 16.0)


def test_supplied_reference_sets_the_progress_denominator(scene_factory, plan_factory):
    scene = scene_factory()
    t = np.arange(1, 41) * 0.1
    fast = np.stack([15.0 * t, 0.0 * t, 0.0 * t], axis=1)  # 60 m in 4 s at 0.1 s steps
    r = score_scene(dataclasses.replace(scene, reference_poses=fast, ego=EgoState(x=0, y=0, heading=0, vx=15.0)), plan_factory(7.5))
    assert 0.4 < r.ego_progress[0] < 0.65


@pytest.mark.parametrize("k", [1, 2, 5])
def test_batch_shapes(scene_factory, plan_factory, k):
    scene = scene_factory()
    props = np.stack([plan_factory(v) for v in np.linspace(0.0, 12.0, k)])
    r = score_scene(scene, props)
    assert len(r) == k
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        if isinstance(v, np.ndarray) and f.name not in ("states", "reference_states"):
            assert v.shape == (k,), f.name
    assert r.states.shape == (k, 41, 11) and r.reference_states.shape == (41, 11)
    # One proposal scored alone equals the same proposal in a batch.
    alone = score_scene(scene, props[-1])
    assert alone.pdms[0] == pytest.approx(r.pdms[-1]) and alone.epdms[0] == pytest.approx(r.epdms[-1])


def test_other_samplings_and_bad_inputs(scene_factory, plan_factory):
    scene = scene_factory()
    t = np.arange(1, 11) * 0.4
    props = np.stack([10.0 * t, 0 * t, 0 * t], axis=1)
    r = score_scene(scene, props, sampling=TrajectorySampling(10, 0.4))
    assert r.pdms[0] >= 0.9
    with pytest.raises(ValueError, match="proposals"):
        score_scene(scene, np.zeros((2, 7, 3)))
    with pytest.raises(ValueError, match="ScoringScene.objects"):
        dataclasses.replace(scene, objects=scene.objects.constant_velocity_forecast(30))
    with pytest.raises(ValueError, match="EgoState.vx"):
        EgoState(x=0.0, y=0.0, heading=0.0, vx=float("nan"))


# ------------------------------------------------------------------------------------------------
# Cross-check against the naive NAVSIM-style scorer and the benchmark entry point.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed, red, steps", [(0, False, 41), (1, True, 51)])
def test_vectorized_scorer_matches_naive_scorer(seed, red, steps):
    rng = np.random.default_rng(seed)
    scene = synthetic_scoring_scene(rng, num_agents=12, num_steps=steps, red_light=red)
    props = synthetic_proposals(scene, rng, 10)
    cfg = PDMScorerConfig(human_penalty_filter=False)
    r = score_scene(scene, props, config=cfg, prepared=prepare_scene(scene, cfg))
    n = naive_score_scene(scene, props, r.reference_states, config=cfg)
    pairs = {
        "nc": r.no_at_fault_collisions, "dac": r.drivable_area_compliance, "ddc": r.driving_direction_compliance,
        "tlc": r.traffic_light_compliance, "ep": r.ego_progress, "ttc": r.time_to_collision_within_bound,
        "lk": r.lane_keeping, "hc": r.history_comfort, "ec": r.extended_comfort, "ep_v1": r.ego_progress_v1,
        "ttc_v1": r.time_to_collision_within_bound_v1, "comfort": r.comfort, "pdms": r.pdms, "epdms": r.epdms,
    }
    for key, value in pairs.items():
        np.testing.assert_allclose(value, n[key], atol=1e-9, err_msg=key)


def test_bench_score_runs():
    out = bench_score(num_proposals=16, num_agents=5, repeats=1)
    assert out["proposals_per_s"] > 0 and out["num_proposals"] == 16
    assert 0.0 <= out["mean_pdms"] <= 1.0 and 0.0 <= out["mean_epdms"] <= 1.0


# ------------------------------------------------------------------------------------------------
# Hostile configurations: weights and thresholds are checked, naming the field.
# ------------------------------------------------------------------------------------------------

WEIGHTS = ["v1_progress_weight", "v1_ttc_weight", "v1_comfort_weight", "progress_weight", "ttc_weight",
           "lane_keeping_weight", "history_comfort_weight", "extended_comfort_weight"]  # fmt: skip


@pytest.mark.parametrize("name", WEIGHTS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, -1.0, "5"])
def test_config_rejects_bad_weights_naming_the_field(name, value):
    with pytest.raises(ValueError, match=rf"PDMScorerConfig\.{name} must be"):
        PDMScorerConfig(**{name: value})


def test_config_rejects_all_zero_weight_vectors():
    with pytest.raises(ValueError, match="v1 weights .* are all 0"):
        PDMScorerConfig(v1_progress_weight=0.0, v1_ttc_weight=0.0, v1_comfort_weight=0.0)
    zero_v2 = dict(progress_weight=0.0, ttc_weight=0.0, lane_keeping_weight=0.0, history_comfort_weight=0.0)
    with pytest.raises(ValueError, match="v2 weights .* are all 0"):
        PDMScorerConfig(**zero_v2, extended_comfort_weight=0.0)
    with pytest.raises(ValueError, match="v2 weights .* are all 0"):  # EC alone: 0 / 0 without a previous plan
        PDMScorerConfig(**zero_v2)
    # Some weights 0 is fine: the scores are then the weighted mean of the others.
    cfg = PDMScorerConfig(v1_ttc_weight=0.0, v1_comfort_weight=0.0, ttc_weight=0.0, extended_comfort_weight=0.0)
    assert cfg.v1_weights.tolist() == [5.0, 0.0, 0.0] and cfg.v2_weights.tolist() == [5.0, 0.0, 2.0, 2.0, 0.0]


@pytest.mark.parametrize(
    "name, value",
    [
        ("driving_direction_horizon_s", 0.0), ("driving_direction_horizon_s", np.nan),
        ("driving_direction_compliance_threshold", -1.0), ("driving_direction_violation_threshold", np.inf),
        ("progress_distance_threshold", np.nan), ("progress_distance_threshold", -5.0),
        ("lane_keeping_deviation_limit", 0.0), ("lane_keeping_horizon_s", -2.0), ("lane_keeping_horizon_s", np.inf),
        ("area_resolution", 0.0), ("area_resolution", np.nan), ("ttc_v2_max_lookahead_steps", -1), ("ttc_v2_max_lookahead_steps", 2.5),
    ],
)  # fmt: skip
def test_config_rejects_bad_thresholds_naming_the_field(name, value):
    with pytest.raises(ValueError, match=rf"PDMScorerConfig\.{name} must"):
        PDMScorerConfig(**{name: value})


def test_config_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="driving_direction_compliance_threshold must not exceed"):
        PDMScorerConfig(driving_direction_compliance_threshold=7.0)
    PDMScorerConfig(driving_direction_compliance_threshold=6.0)  # equal is allowed
