"""``bench-base-v3``'s ``emergency_vehicle`` event (Give_Way): the vehicle, the leaderboard's
YieldToEmergencyVehicleTest on hand-built situations, the expert yielding; and background
vehicles braking for a pedestrian in their path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rap.eval.closed_loop.config import ClosedLoopConfig
from rap.eval.closed_loop.infractions import (
    EV_SUCCESS_PCT,
    EmergencyVehicleTest,
    Monitor,
    emergency_vehicle_share,
)
from rap.eval.closed_loop.pedestrians import PEDESTRIAN_SIZE, Walkers
from rap.eval.closed_loop.routes import EV_BEHIND_M, EVENT_ABILITY, load_routes
from rap.eval.closed_loop.runner import load_agent_spec
from rap.eval.closed_loop.world import EV_SIZE, World
from rap.eval.driving_score import merge_repeats, route_record
from rap.scene import AgentType
from rap.sim.bicycle import PACIFICA, StateIndex
from rap.sim.idm import IDMAgents, Routes
from tests.rap.eval.closed_loop.scripted import (
    PursuitAgent,
    ev_route,
    quiet_config,
    straight_route,
)
from tests.rap.eval.closed_loop.scripted import drive as _drive

# --- the criterion -----------------------------------------------------------------------------


def test_the_share_is_the_mean_speed_over_the_target_rounded_as_the_leaderboard_does():
    assert emergency_vehicle_share([10.0, 8.0, 9.0], 12.0) == 75.0
    assert emergency_vehicle_share([10.0, 10.0, 9.0], 12.0) == round(29.0 / 3.0 / 12.0 * 100.0, 2) == 80.56
    assert emergency_vehicle_share([], 12.0) == 100.0  # never logged: success


@pytest.mark.parametrize(("share", "fails"), [(100.0, False), (95.0, False), (94.99, True), (60.0, True)])
def test_the_infraction_is_raised_exactly_below_95_percent(share, fails):
    target = 16.764
    test = EmergencyVehicleTest(target)
    for _ in range(40):
        test.log(share / 100.0 * target)
    inf = test.close(time_s=12.5, x=1.0, y=2.0)
    assert test.closed and test.share == pytest.approx(share, abs=1e-9)
    assert test.close() is None  # once
    if not fails:
        assert inf is None
        return
    assert inf.name == "yield_emergency_vehicle_infractions" and inf.percentage == share and inf.time_s == 12.5
    assert inf.message == f"Agent failed to yield to an emergency vehicle, slowing it to {share}% of its velocity)"
    rec = route_record(0, "RouteScenario_0", 100.0, merge_repeats([inf]), route_length_m=200.0, duration_game_s=1.0, duration_system_s=1.0)
    assert rec["scores"]["score_penalty"] == 0.7 and rec["scores"]["score_composed"] == 70.0
    assert rec["infractions"]["yield_emergency_vehicle_infractions"] == [inf.message]
    assert EV_SUCCESS_PCT == 95.0


# --- the vehicle in the world ------------------------------------------------------------------


def _place_ego(world: World, arc: float, v: float) -> None:
    p, t = world.route_pose(arc)
    rear = p - PACIFICA.rear_axle_to_center * t
    world.ego[[StateIndex.X, StateIndex.Y, StateIndex.HEADING, StateIndex.VELOCITY_X]] = (rear[0], rear[1], np.arctan2(t[1], t[0]), v)


def test_the_emergency_vehicle_appears_behind_the_ego_as_a_vehicle_track():
    spec = ev_route()
    assert EVENT_ABILITY[spec.event.kind] == "Give_Way" and spec.event.speed > 1.2 * 11.0
    world = World(spec, quiet_config().closed_loop.world())
    row = 1 + world.ev  # snapshot rows: the ego first
    scene = world.snapshot()
    assert not scene.tracks.valid[row, scene.current_index]  # not there yet
    _place_ego(world, spec.event.arc + 0.5, 8.0)
    world.plan_states = None
    world.step()
    assert world.ev_started
    scene = world.snapshot()
    now = scene.current_index
    tr = scene.tracks
    assert tr.valid[row, now] and tr.types[row] == AgentType.VEHICLE
    assert (tr.length[row, now], tr.width[row, now]) == pytest.approx(EV_SIZE[:2])
    assert np.hypot(tr.vx[row, now], tr.vy[row, now]) == pytest.approx(spec.event.speed)
    gap = world.agents.s[world.ev] - world.offset
    assert gap == pytest.approx(spec.event.arc + 0.5 - EV_BEHIND_M, abs=1.0)
    # no background vehicle is routed through its way or the lane to move into
    dense = World(spec, ClosedLoopConfig().closed_loop.world())
    banned = {spec.event.lane, spec.event.other_lane}
    for k, role in enumerate(dense.roles):
        if role == "background":
            assert not banned & set(int(i) for i in dense.agents.routes.lane_ids[k][np.isfinite(dense.agents.routes.lane_starts[k])])


def _ev_world() -> tuple[World, Monitor]:
    world = World(ev_route(), quiet_config().closed_loop.world())
    return world, Monitor(world)


def _judge(world: World, monitor: Monitor, ev_speeds: np.ndarray, ego_speed: float, ego_start: float, pass_at_end: bool = True) -> None:
    """The ego drives its lane at ``ego_speed``; the emergency vehicle, 100 m behind, at
    ``ev_speeds`` per tick; the monitor judges every tick; then (``pass_at_end``) the vehicle is
    put past the ego."""
    dt = world.dt
    ego_arc, ev_s = ego_start, ego_start + world.offset - 100.0
    world.ev_started = True
    monitor.progress = ego_start - 0.5
    for v in ev_speeds:
        _place_ego(world, ego_arc, ego_speed)
        world.agents = dataclasses.replace(world.agents, s=_set(world.agents.s, world.ev, ev_s), v=_set(world.agents.v, world.ev, v), active=_set(world.agents.active, world.ev, True))
        world.tick += 1
        monitor.observe()
        ego_arc += ego_speed * dt
        ev_s += v * dt
    if not pass_at_end:
        return
    # past the ego: the log ends
    world.agents = dataclasses.replace(world.agents, s=_set(world.agents.s, world.ev, ego_arc + world.offset + 10.0))
    monitor.observe()


def _set(a: np.ndarray, k: int, value) -> np.ndarray:
    out = a.copy()
    out[k] = value
    return out


@pytest.mark.parametrize(("share", "fails"), [(95.0, False), (94.9, True)])
def test_the_monitor_logs_the_vehicle_while_it_is_behind_the_ego(share, fails):
    world, monitor = _ev_world()
    target = world.spec.event.speed
    speeds = np.full(50, target)
    speeds[10:40] = target * (1.0 - (1.0 - share / 100.0) * 50 / 30)  # slowed for 3 of the 5 s: the mean is share %
    _judge(world, monitor, speeds, 5.0, world.spec.event.arc + 1.0)
    assert monitor.ev_test.closed and len(monitor.ev_test.speeds) == 50
    got = [i for i in monitor.final_infractions() if i.name == "yield_emergency_vehicle_infractions"]
    assert monitor.ev_test.share == pytest.approx(share, abs=0.011)
    if fails:
        assert len(got) == 1 and got[0].message == f"Agent failed to yield to an emergency vehicle, slowing it to {monitor.ev_test.share}% of its velocity)"
    else:
        assert not got


def test_a_vehicle_still_behind_at_the_end_is_judged_then():
    world, monitor = _ev_world()
    _judge(world, monitor, np.full(30, 8.0), 8.0, world.spec.event.arc + 1.0, pass_at_end=False)
    assert not monitor.ev_test.closed and len(monitor.ev_test.speeds) == 30
    got = [i for i in monitor.final_infractions() if i.name == "yield_emergency_vehicle_infractions"]
    assert len(got) == 1 and got[0].percentage == round(8.0 / world.spec.event.speed * 100.0, 2)
    assert [i for i in monitor.final_infractions() if i.name == "yield_emergency_vehicle_infractions"] == got  # judged once


# --- agents ------------------------------------------------------------------------------------


def test_an_agent_that_keeps_its_lane_slows_the_vehicle_and_gets_the_penalty():
    result = _drive(PursuitAgent(8.0), ev_route(), quiet_config())
    rec = result["record"]
    got = rec["infractions"]["yield_emergency_vehicle_infractions"]
    assert len(got) == 1 and got[0].startswith("Agent failed to yield to an emergency vehicle, slowing it to "), rec
    assert got[0].endswith("% of its velocity)")
    others = {k: v for k, v in rec["infractions"].items() if v and k not in ("min_speed_infractions", "yield_emergency_vehicle_infractions", "red_light")}
    assert not others, rec
    assert rec["scores"]["score_penalty"] == pytest.approx(0.7 * 0.7 ** len(rec["infractions"]["red_light"]), abs=1e-6)


def test_the_expert_lets_the_emergency_vehicle_pass():
    result = _drive(load_agent_spec("expert"), ev_route(), ClosedLoopConfig())
    rec = result["record"]
    assert not rec["infractions"]["yield_emergency_vehicle_infractions"], rec
    assert not rec["infractions"]["collisions_vehicle"] and not rec["infractions"]["collisions_layout"], rec
    assert rec["scores"]["score_composed"] >= 90.0, rec


def test_the_expert_recognises_the_vehicle_only_when_it_speeds_up_from_behind():
    from rap.eval.closed_loop.expert import emergency_vehicle_behind

    world = World(ev_route(), quiet_config().closed_loop.world())
    _place_ego(world, world.spec.event.arc + 1.0, 6.0)
    world.plan_states = None
    world.step()
    scene = world.snapshot()
    assert emergency_vehicle_behind(scene, scene.current_index, 6.0) == 1 + world.ev
    world.agents = dataclasses.replace(world.agents, v=_set(world.agents.v, world.ev, 10.0))  # at the limit: just traffic
    world.history[-1] = world._frame()
    scene = world.snapshot()
    assert emergency_vehicle_behind(scene, scene.current_index, 6.0) is None


def test_bench_dev10_swaps_a_crossing_route_for_the_emergency_vehicle():
    dev = load_routes("bench:dev10")
    kinds = [r.event.kind for r in dev]
    assert kinds.count("emergency_vehicle") == 1 and kinds.count("crossing") == 1
    base = load_routes("bench:base")
    ev = [r for r in base if r.event.kind == "emergency_vehicle"]
    assert len(ev) == 6 and ev[0].town_seed == dev[kinds.index("emergency_vehicle")].town_seed
    assert all(150.0 <= r.length <= 400.0 for r in ev)


# --- background vehicles and pedestrians -------------------------------------------------------


def _one_car_world(with_walker: bool) -> tuple[World, float]:
    """The straight ``ped_crossing`` route without traffic, the ego standing at its start, one
    background vehicle on the route's lanes 30 m ahead at 10 m/s and (``with_walker``) a
    pedestrian standing on the lane centre 90 m ahead of the ego; returns the pedestrian's arc."""
    spec = straight_route("ped_crossing")
    world = World(spec, quiet_config(standing_start=True).closed_loop.world())
    lanes = world.route_lanes
    path = world._idm_route(lanes)
    world.agents = IDMAgents(Routes.stack([path]), np.array([world.offset + 30.0]), np.array([10.0]), np.array([4.6]), np.array([1.9]))
    world.agent_height = np.array([1.5])
    world.obeys_lights = np.array([True])
    world.roles = ["background"]
    world.is_background = np.array([True])
    world.stalled = np.zeros(1)
    world.agent_stops = []
    ped_arc = 90.0
    p, _ = world.route_pose(ped_arc)
    world.walkers = Walkers.create(p[None], p[None] + 0.01, np.array([1.5])) if with_walker else Walkers.empty()
    return world, ped_arc


def test_background_vehicles_brake_for_a_pedestrian_in_their_path():
    world, ped_arc = _one_car_world(with_walker=True)
    half = 0.5 * 4.6
    for _ in range(150):
        world.step()
        front = float(world.agents.s[0]) - world.offset + half
        assert front < ped_arc - 0.5 * PEDESTRIAN_SIZE[0], "ran into the pedestrian"
    assert world.agents.v[0] < 0.1 and front > ped_arc - 10.0  # stopped, a few metres before it
    # without the pedestrian the same car drives on past that point
    free, _ = _one_car_world(with_walker=False)
    for _ in range(150):
        free.step()
    assert float(free.agents.s[0]) - free.offset > ped_arc + 20.0


def test_the_same_seed_gives_the_same_emergency_vehicle_world():
    def run() -> tuple[np.ndarray, np.ndarray]:
        world = World(ev_route(), ClosedLoopConfig().closed_loop.world(), seed=3)
        _place_ego(world, world.spec.event.arc + 0.5, 0.0)
        for _ in range(40):
            world.step()
        return world.agents.s.copy(), world.agents.v.copy()

    (s1, v1), (s2, v2) = run(), run()
    assert np.array_equal(s1, s2) and np.array_equal(v1, v2)
