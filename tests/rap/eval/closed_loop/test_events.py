"""The events of ``bench-base-v2`` (``v3``'s emergency vehicle: test_emergency_vehicle.py; ``v4``'s cut-in: test_lane_changes.py): moving starts, the pedestrian stepping out, stop signs; their
infractions on hand-built situations (penalty factors, the leaderboard's messages)."""

from __future__ import annotations

import numpy as np
import pytest

from rap.eval.agent import ConstantVelocityAgent
from rap.eval.closed_loop.config import ClosedLoopConfig
from rap.eval.closed_loop.infractions import STOP_AREA_M, Monitor, route_stop_signs
from rap.eval.closed_loop.routes import (
    BASE_VERSION,
    EVENT_ABILITY,
    EVENTS_BASE_ORDER,
    load_routes,
)
from rap.eval.closed_loop.runner import load_agent_spec
from rap.eval.closed_loop.world import World, WorldConfig
from rap.eval.driving_score import merge_repeats, route_record
from rap.scene import AgentType
from rap.sim.bicycle import PACIFICA, StateIndex
from tests.rap.eval.closed_loop.scripted import (
    PursuitAgent,
    quiet_config,
    straight_route,
)
from tests.rap.eval.closed_loop.scripted import drive as _drive
from tests.rap.eval.closed_loop.scripted import penalised as _penalised

# --- the suite ---------------------------------------------------------------------------------


def test_bench_base_v4_has_6_routes_per_event_and_dev10_two_per_ability():
    assert BASE_VERSION == "bench-base-v4"
    routes = load_routes("bench:base")
    assert len(routes) == 6 * len(EVENTS_BASE_ORDER) == 54
    assert [r.event.kind for r in routes] == [k for k in EVENTS_BASE_ORDER for _ in range(6)]
    assert set(EVENTS_BASE_ORDER) == set(EVENT_ABILITY)
    assert all(r.start_speed > 0 for r in routes)
    dev = load_routes("bench:dev10")
    abilities = [a for r in dev for a in r.abilities]
    assert sorted(set(abilities)) == sorted(set(EVENT_ABILITY.values())) and all(abilities.count(a) == 2 for a in set(abilities))
    assert {"ped_crossing", "stop_sign", "emergency_vehicle"} <= {r.event.kind for r in dev}
    assert all(150.0 <= r.length <= 400.0 for r in routes)


# --- moving starts -----------------------------------------------------------------------------


def test_the_ego_starts_at_the_route_speed_with_a_past_consistent_with_it():
    spec = load_routes("bench:dev10")[0]
    world = World(spec)
    assert world.ego_box()[2] == pytest.approx(spec.start_speed) and spec.start_speed > 5.0
    scene = world.snapshot()
    now = scene.current_index
    tr = scene.tracks
    speed = np.hypot(tr.vx[0, : now + 1], tr.vy[0, : now + 1])
    np.testing.assert_allclose(speed, spec.start_speed, rtol=1e-9)
    step = np.hypot(np.diff(tr.x[0, : now + 1]), np.diff(tr.y[0, : now + 1]))
    np.testing.assert_allclose(step, spec.start_speed * world.dt, rtol=1e-9)  # moving, not standing, before the start
    standing = World(spec, WorldConfig(standing_start=True))
    assert standing.ego_box()[2] == 0.0


def test_constant_velocity_drives_from_a_moving_start():
    result = _drive(ConstantVelocityAgent(), straight_route("lead_brake"), quiet_config())
    assert result["record"]["scores"]["score_route"] > 20.0  # it used to stand at the start and get blocked
    assert result["record"]["status"] != "Failed - Agent got blocked"


# --- the pedestrian ----------------------------------------------------------------------------


def test_the_pedestrian_is_in_the_snapshot_and_steps_out_across_the_road():
    spec = straight_route("ped_crossing")
    world = World(spec, quiet_config().closed_loop.world())
    scene = world.snapshot()
    now = scene.current_index
    rows = np.flatnonzero(scene.tracks.types == AgentType.PEDESTRIAN)
    assert rows.size == 1
    r = int(rows[0])
    assert scene.tracks.valid[r, now] and scene.tracks.length[r, now] == pytest.approx(0.6)
    assert np.hypot(scene.tracks.vx[r, now], scene.tracks.vy[r, now]) == 0.0  # waiting on the sidewalk
    p, t = world.route_pose(spec.event.arc)
    side = float((np.array([scene.tracks.x[r, now], scene.tracks.y[r, now]]) - p) @ np.array([-t[1], t[0]]))
    assert side < -0.5 * world.town.lanes[spec.event.lane].width  # right of the ego's lane, off it
    world.walkers = world.walkers.started(np.array([True]))
    for _ in range(10):
        world.step()
    scene = world.snapshot()
    now = scene.current_index
    assert np.hypot(scene.tracks.vx[r, now], scene.tracks.vy[r, now]) == pytest.approx(spec.event.speed)


def test_driving_into_the_pedestrian_gets_the_pedestrian_collision_penalty():
    result = _drive(PursuitAgent(8.0), straight_route("ped_crossing"), quiet_config())
    rec = result["record"]
    assert set(_penalised(rec)) - {"red_light"} == {"collisions_pedestrian"}
    hits = rec["infractions"]["collisions_pedestrian"]
    assert len(hits) == 1 and hits[0].startswith("Agent collided against object with type=walker.pedestrian and id=")
    assert rec["scores"]["score_penalty"] == pytest.approx(0.5 * 0.7 ** len(rec["infractions"]["red_light"]), abs=1e-6)


def test_the_expert_stops_for_the_pedestrian():
    result = _drive(load_agent_spec("expert"), straight_route("ped_crossing"), ClosedLoopConfig())
    rec = result["record"]
    assert not rec["infractions"]["collisions_pedestrian"] and not rec["infractions"]["collisions_vehicle"], rec
    assert rec["scores"]["score_composed"] >= 90.0, rec


# --- stop signs --------------------------------------------------------------------------------


def _along_route(world: World, monitor: Monitor, arcs: np.ndarray, speeds: np.ndarray) -> None:
    """Puts the ego's box centre at each route arc in turn, at each speed, and judges it."""
    for arc, v in zip(arcs, speeds):
        p, t = world.route_pose(float(arc))
        rear = p - PACIFICA.rear_axle_to_center * t
        world.ego[[StateIndex.X, StateIndex.Y, StateIndex.HEADING, StateIndex.VELOCITY_X]] = (rear[0], rear[1], np.arctan2(t[1], t[0]), v)
        monitor.observe()


def _stop_sign_world() -> tuple[World, Monitor, float, int]:
    world = World(straight_route("stop_sign"), quiet_config().closed_loop.world())
    monitor = Monitor(world)
    (line, sign_id, _), *_ = route_stop_signs(world)
    assert line == pytest.approx(world.spec.event.arc)
    return world, monitor, line, sign_id


@pytest.mark.parametrize(
    ("stop_front", "expected"),
    [(None, 1), (-3.0, 0), (-(STOP_AREA_M - 0.5), 0), (-(STOP_AREA_M + 2.0), 1), (1.0, 0)],
    ids=["no stop", "3 m before the line", "just inside the area", "before the area", "front just past the line"],
)  # fmt: skip
def test_the_stop_sign_infraction_is_raised_exactly_when_the_ego_does_not_stop_in_the_area(stop_front, expected):
    world, monitor, line, sign_id = _stop_sign_world()
    half = 0.5 * PACIFICA.length
    arcs = np.arange(0.0, line + 12.0, 0.5)
    speeds = np.full(len(arcs), 6.0)
    if stop_front is not None:  # standing (0.05 m/s) with the front bumper at line + stop_front
        k = int(np.argmin(np.abs(arcs + half - (line + stop_front))))
        speeds[k] = 0.05
    _along_route(world, monitor, arcs, speeds)
    ran = [i for i in monitor.final_infractions() if i.name == "stop_infraction"]
    assert len(ran) == expected
    if expected:
        pos = world.map.stop_signs.positions[list(world.map.stop_signs.ids).index(sign_id)]
        assert ran[0].message == f"Agent ran a stop with id={sign_id} at (x={pos[0]:.3f}, y={pos[1]:.3f}, z=0.000)"
        rec = route_record(0, "RouteScenario_0", 100.0, merge_repeats(ran), route_length_m=world.length, duration_game_s=1.0, duration_system_s=1.0)
        assert rec["scores"]["score_penalty"] == 0.8 and rec["scores"]["score_composed"] == 80.0


def test_a_slow_roll_through_the_area_is_not_a_stop():
    world, monitor, line, _ = _stop_sign_world()
    arcs = np.arange(0.0, line + 12.0, 0.5)
    _along_route(world, monitor, arcs, np.full(len(arcs), 0.3))  # 0.3 m/s: slow, but not < 0.1 m/s
    assert [i.name for i in monitor.final_infractions() if i.name == "stop_infraction"] == ["stop_infraction"]


def test_the_expert_stops_at_the_stop_sign_and_goes_on():
    result = _drive(load_agent_spec("expert"), straight_route("stop_sign"), ClosedLoopConfig())
    rec = result["record"]
    assert not rec["infractions"]["stop_infraction"], rec
    assert rec["status"] in ("Perfect", "Completed") and rec["scores"]["score_composed"] >= 90.0, rec
