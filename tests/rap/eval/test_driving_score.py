"""Bench2Drive's route judgement on hand-built episodes: penalties, statuses, results.json,
repeated collisions, smoothness, efficiency, abilities."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rap.eval.driving_score import (
    LABELS,
    PENALTY_VALUES,
    Infraction,
    ability_table,
    driving_score,
    efficiency,
    merge_repeats,
    results_document,
    route_record,
    smoothness,
    success_rate,
)


def record(i, rc, infractions=(), failure=None, length=200.0):
    return route_record(i, f"RouteScenario_{i}", rc, list(infractions), route_length_m=length, duration_game_s=60.0, duration_system_s=5.0, failure=failure)


def vehicle_hit(t=1.0, x=0.0):
    return Infraction("collisions_vehicle", "Agent collided against object with type=vehicle", t, x, 0.0, other=7)


def test_penalties_multiply_and_score_is_completion_times_penalty():
    infs = [vehicle_hit(), Infraction("red_light", "Agent ran a red light", 20.0), Infraction("stop_infraction", "Agent ran a stop", 30.0)]
    r = record(0, 100.0, infs)
    expected = PENALTY_VALUES["collisions_vehicle"] * 0.7 * 0.8
    assert r["scores"]["score_penalty"] == pytest.approx(expected) and r["scores"]["score_composed"] == pytest.approx(100 * expected)
    assert r["status"] == "Completed" and r["num_infractions"] == 3
    assert r["infractions"]["red_light"] == ["Agent ran a red light"]
    assert record(1, 100.0)["status"] == "Perfect" and record(1, 100.0)["scores"]["score_composed"] == 100.0


def test_outside_route_lanes_scales_by_its_share_and_min_speed_costs_nothing():
    off = Infraction("outside_route_lanes", "Agent went outside its route lanes for about 30.0 meters (15.0% of the completed route)", percentage=15.0)
    slow = Infraction("min_speed_infractions", "Average speed is 60.00% of the surrounding vehicles' average speed", percentage=60.0)
    r = record(0, 80.0, [off, slow], failure="vehicle_blocked")
    assert r["scores"]["score_penalty"] == pytest.approx(0.85)
    assert r["scores"]["score_composed"] == pytest.approx(68.0)
    assert r["status"] == "Failed - Agent got blocked"
    assert record(1, 40.0, failure="route_timeout")["infractions"]["route_timeout"] == ["Route timeout."]


def test_repeated_collisions_within_5_m_and_5_s_count_once():
    hits = [vehicle_hit(1.0, 0.0), vehicle_hit(3.0, 2.0), vehicle_hit(9.0, 2.5), vehicle_hit(10.0, 20.0)]
    kept = merge_repeats(hits + [Infraction("red_light", "r", 2.0)])
    assert [(k.name, k.time_s) for k in kept] == [("collisions_vehicle", 1.0), ("red_light", 2.0), ("collisions_vehicle", 9.0), ("collisions_vehicle", 10.0)]


def test_results_json_has_the_leaderboard_layout_and_values():
    off = Infraction("outside_route_lanes", "Agent went outside its route lanes for about 100.0 meters (10.0% of the completed route)", percentage=10.0)
    records = [record(0, 100.0, [vehicle_hit()], length=1000.0), record(1, 50.0, [off], failure="route_dev", length=1000.0), record(2, 100.0, length=500.0)]
    doc = json.loads(json.dumps(results_document(records)))  # JSON-ready
    g = doc["_checkpoint"]["global_record"]
    assert doc["_checkpoint"]["progress"] == [3, 3] and len(doc["_checkpoint"]["records"]) == 3
    scores = [60.0, 45.0, 100.0]
    assert g["scores_mean"]["score_composed"] == pytest.approx(sum(scores) / 3, abs=1e-6)
    assert g["scores_std_dev"]["score_composed"] == pytest.approx(np.std(scores, ddof=1), abs=1e-3)
    km = 1.0 + 0.5 + 0.5  # route length x completion
    assert g["infractions"]["collisions_vehicle"] == pytest.approx(round(1 / km, 3))
    assert g["infractions"]["outside_route_lanes"] == pytest.approx(0.1)  # km outside, not per km
    assert g["status"] == "Failed" and g["meta"]["exceptions"] == [["RouteScenario_1", 1, "Failed - Agent deviated from the route"]]
    assert doc["labels"] == [label for label, _ in LABELS] and doc["labels"][0] == "Avg. driving score"
    assert float(doc["values"][0]) == g["scores_mean"]["score_composed"] and float(doc["values"][4]) == g["infractions"]["collisions_vehicle"]
    assert doc["entry_status"] == "Finished" and doc["eligible"] is True
    assert driving_score(records) == pytest.approx(sum(scores) / 3)
    assert driving_score(records, total_routes=4) == pytest.approx(sum(scores) / 4)  # a route without a record counts 0
    assert success_rate(records) == pytest.approx(100 / 3)  # only the perfect route


def test_smoothness_counts_the_comfortable_2_s_segments():
    t = np.arange(60) * 0.1
    heading = np.zeros(60)
    calm = np.zeros((60, 2))
    assert smoothness(calm, heading, np.zeros(60)) == 1.0
    harsh = calm.copy()
    harsh[25:35, 0] = -8.0  # a hard brake in the second segment only
    assert smoothness(harsh, heading, np.zeros(60)) == pytest.approx(2 / 3)
    swerve = np.zeros(60)
    swerve[45:55] = 1.5 * np.sin(np.pi * (t[45:55] - t[45]))  # yaw rate over 0.95 rad/s in the third
    assert smoothness(calm, heading, swerve) == pytest.approx(2 / 3)
    assert smoothness(harsh[:15], heading[:15], np.zeros(15)) == 1.0 and smoothness(harsh[20:35], heading[20:35], np.zeros(15)) == 0.0


def test_efficiency_is_the_mean_of_route_means_dropping_absurd_values():
    def slow(pct):
        return Infraction("min_speed_infractions", f"Average speed is {pct}% of the surrounding vehicles' average speed", percentage=float(pct))

    records = [record(0, 100.0, [slow(80), slow(100)]), record(1, 100.0, [slow(50), slow(2000)]), record(2, 100.0)]
    assert efficiency(records) == pytest.approx((90 + 50) / 2)
    assert efficiency([record(0, 100.0)]) is None


def test_ability_table_groups_routes():
    records = [record(0, 100.0), record(1, 100.0, [vehicle_hit()]), record(2, 30.0, failure="vehicle_blocked")]
    table = ability_table(records, {"RouteScenario_0": ["Merging"], "RouteScenario_1": ["Merging", "Emergency_Brake"], "RouteScenario_2": ["Give_Way"]})
    assert table["Merging"] == {"routes": 2, "success_rate": 50.0, "driving_score": pytest.approx(80.0)}
    assert table["Give_Way"]["driving_score"] == pytest.approx(30.0) and table["Overtaking"]["routes"] == 0


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="route_completion must be in \\[0, 100\\], got 120"):
        record(0, 120.0)
    with pytest.raises(ValueError, match="unknown failure 'tired'"):
        record(0, 10.0, failure="tired")
    with pytest.raises(ValueError, match="unknown name 'speeding'"):
        Infraction("speeding", "x")
    with pytest.raises(ValueError, match="outside_route_lanes: needs a finite percentage"):
        Infraction("outside_route_lanes", "x", percentage=math.nan)
