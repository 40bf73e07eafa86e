"""Background traffic at junctions without lights, on hand-built situations: IDM vehicles stop at
all-way-stop lines, stand, and go first come, first served; at unprotected connectors they yield
to vehicles inside crossing connectors (see rap/eval/closed_loop/junction_rules.py)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from rap.eval.closed_loop.junction_rules import SIGN_REACH, STAND_S, JunctionRules
from rap.eval.closed_loop.world import World
from rap.scene import StopSigns
from rap.sim.bicycle import StateIndex
from rap.sim.idm import IDMAgents, IDMParameters, Routes
from tests.rap.eval.closed_loop.scripted import quiet_config, straight_route

_L, _W = 4.6, 1.9


@functools.lru_cache(maxsize=1)
def _spec():
    return straight_route("stop_sign")


def _world(signs: bool = True) -> tuple[World, int]:
    """A quiet world around the ``stop_sign`` route's all-way stop, the ego parked far away;
    the stop connector of the route. ``signs=False``: the junction's stop signs removed (its
    connectors are then unprotected)."""
    world = World(_spec(), quiet_config().closed_loop.world())
    if not signs:
        world.map = dataclasses.replace(world.map, stop_signs=StopSigns.empty())
    world.ego[[StateIndex.X, StateIndex.Y]] += 5000.0
    c = next(i for i in world.route_lanes if world.town.lanes[i].is_connector and not world.town.junctions[world.town.lanes[i].junction].signalized)
    return world, c


def _crossing(world: World, c: int) -> int:
    """A connector of ``c``'s junction from another arm whose path conflicts with ``c``'s (straight if any)."""
    town = world.town
    jn = town.junctions[town.lanes[c].junction]
    mine = jn.connectors.index(c)
    found = [o for q, o in enumerate(jn.connectors) if town.lanes[o].entry_arm != town.lanes[c].entry_arm and jn.conflicts[mine, q]]
    assert found, "no crossing connector"
    straight = [o for o in found if town.lanes[o].movement == "straight"]
    return (straight or found)[0]


def _length(world: World, i: int) -> float:
    return float(np.linalg.norm(np.diff(world.town.lanes[i].points, axis=0), axis=1).sum())


def _put(world: World, connectors: list[int], offsets: list[float], speeds: list[float]) -> None:
    """One car per connector: on its entry lane, its front bumper ``offset`` m before the stop
    line (negative: past it, inside the connector), at ``speed``; route: entry lane, connector,
    exit lane, and on."""
    town = world.town
    paths, s0 = [], []
    for c, off in zip(connectors, offsets):
        pred = town.lanes[c].predecessors[0]
        route = [pred, c, town.lanes[c].successors[0]]
        while len(route) < 6 and town.lanes[route[-1]].successors:
            route.append(town.lanes[route[-1]].successors[0])
        paths.append(world._idm_route(route))
        s0.append(float(paths[-1].lane_starts[1]) - off - 0.5 * _L)
    n = len(paths)
    agents = IDMAgents(Routes.stack(paths), np.array(s0), np.array(speeds, dtype=float), np.full(n, _L), np.full(n, _W), params=IDMParameters(max_accel=1.5, time_headway=1.2))
    world.set_agents(agents, np.ones(n, bool))


def _lines(world: World) -> np.ndarray:
    """(A,) arc of each car's stop line (the start of its connector)."""
    return world.agents.routes.lane_starts[:, 1]


def test_a_background_car_stops_at_the_stop_line_stands_and_goes():
    world, c = _world()
    _put(world, [c], [30.0], [8.0])
    line = _lines(world)[0]
    stood, passed_at, min_v_at_line = 0.0, None, np.inf
    for _ in range(300):
        world.step()
        front = world.agents.s[0] + 0.5 * _L
        if line - SIGN_REACH <= front <= line:
            min_v_at_line = min(min_v_at_line, world.agents.v[0])
            if world.agents.v[0] < 0.1:
                stood += world.dt
        if passed_at is None and front > line:
            passed_at = world.time_s
    assert min_v_at_line < 0.1  # stopped at the line
    assert stood >= STAND_S - 1e-6  # for at least a second
    assert passed_at is not None and world.agents.s[0] + 0.5 * _L > line + 20.0  # then went on through


def _drives_through_its_line(world) -> bool:
    """Whether agent 0 passes its first stop line faster than 1 m/s (80 ticks)."""
    line = _lines(world)[0]
    vs = []
    for _ in range(80):
        world.step()
        if abs(world.agents.s[0] + 0.5 * _L - line) < SIGN_REACH:
            vs.append(world.agents.v[0])
    return bool(vs) and min(vs) > 1.0


def test_without_the_sign_rule_the_car_would_drive_through():
    world, c = _world()
    _put(world, [c], [30.0], [8.0])
    world.rules = JunctionRules(world.town, world.agents.routes.lane_ids, world.agents.routes.lane_starts, world.agents.routes.length, np.zeros(1, bool), world.stop_lanes, world.signal_lanes)
    assert _drives_through_its_line(world)


@pytest.mark.parametrize("first", [0, 1])
def test_two_cars_at_an_all_way_stop_go_in_arrival_order(first):
    world, c = _world()
    o = _crossing(world, c)
    offsets = [45.0, 45.0]
    offsets[first] = 20.0  # the nearer car arrives first (whichever index it has)
    _put(world, [c, o], offsets, [8.0, 8.0])
    lines = _lines(world)
    ends = world.agents.routes.lane_starts[:, 2]  # connector ends
    arrived = [None, None]
    passed = [None, None]
    cleared = [None, None]
    for _ in range(500):
        world.step()
        front = world.agents.s + 0.5 * _L
        for k in range(2):
            if cleared[k] is None and world.agents.s[k] - 0.5 * _L >= ends[k]:
                cleared[k] = world.time_s
            if arrived[k] is None and lines[k] - SIGN_REACH <= front[k] <= lines[k] and world.agents.v[k] < 0.1:
                arrived[k] = world.time_s
            if passed[k] is None and front[k] > lines[k]:
                passed[k] = world.time_s
        if None not in passed:
            break
    second = 1 - first
    assert None not in arrived and arrived[first] < arrived[second]  # both stopped, in this order
    assert None not in passed and passed[first] < passed[second]
    # the second waits at its line until the first has left its crossing connector
    assert cleared[first] is not None and passed[second] > cleared[first]


def test_same_situation_same_decisions():
    runs = []
    for _ in range(2):
        world, c = _world()
        _put(world, [c, _crossing(world, c)], [25.0, 30.0], [8.0, 8.0])
        for _ in range(200):
            world.step()
        runs.append((world.agents.s.copy(), world.rules.granted.copy()))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_at_an_unprotected_connector_a_car_yields_to_one_inside_a_crossing_connector():
    world, c = _world(signs=False)
    o = _crossing(world, c)
    # car 1 is 2 m into the crossing connector at walking pace; car 0 comes at 8 m/s from 30 m
    _put(world, [c, o], [30.0, -2.0], [8.0, 1.0])
    assert world.rules.kind[0, 0] == 2  # unprotected
    lines = _lines(world)
    conn_end = world.agents.routes.lane_starts[:, 2]
    entered_while_occupied = False
    stopped = False
    passed = None
    for _ in range(300):
        world.step()
        front = world.agents.s + 0.5 * _L
        inside_1 = world.agents.s[1] - 0.5 * _L < conn_end[1]
        if front[0] > lines[0] and inside_1:
            entered_while_occupied = True
        if world.agents.v[0] < 0.5 and front[0] <= lines[0]:
            stopped = True
        if passed is None and front[0] > lines[0]:
            passed = world.time_s
    assert stopped and not entered_while_occupied
    assert passed is not None  # it went once the crossing car had left


def test_at_an_unprotected_connector_a_car_with_nobody_inside_does_not_stop():
    world, c = _world(signs=False)
    _put(world, [c], [30.0], [8.0])
    assert _drives_through_its_line(world)


def test_a_car_at_the_stop_line_lets_a_vehicle_that_ignores_the_signs_pass_first():
    world, c = _world()
    o = _crossing(world, c)
    # car 0 stands at its line; car 1 (ignoring the rules, as the emergency vehicle) comes at 12 m/s from 60 m
    _put(world, [c, o], [1.5, 60.0], [0.0, 12.0])
    world.set_agents(world.agents, np.array([True, False]))
    lines = _lines(world)
    ends = world.agents.routes.lane_starts[:, 2]
    passed = cleared = None
    min_v1 = np.inf
    for _ in range(300):
        world.step()
        if cleared is None:
            min_v1 = min(min_v1, world.agents.v[1])
        if passed is None and world.agents.s[0] + 0.5 * _L > lines[0]:
            passed = world.time_s
        if cleared is None and world.agents.s[1] - 0.5 * _L >= ends[1]:
            cleared = world.time_s
    assert cleared is not None and passed is not None and passed > cleared
    assert min_v1 > world.agents.routes.vmax[1].min() - 0.2  # never slowed down by car 0 (only by its curve)


def test_in_a_bench_world_background_traffic_never_passes_a_stop_line_without_standing_at_it():
    from rap.eval.closed_loop.routes import load_routes

    world = World(load_routes("bench:dev10")[3])  # the stop_sign route: full traffic, the ego standing
    assert world.spec.event.kind == "stop_sign"
    rules = world.rules
    passed = ran = 0
    for _ in range(400):
        front_before = world.agents.s + 0.5 * world.agents.length
        world.step()
        front = world.agents.s + 0.5 * world.agents.length
        for a in np.flatnonzero(rules.obey & world.agents.active):
            for k in np.flatnonzero(rules.kind[a] == 1):  # stop-sign connectors of its route
                if front_before[a] <= rules.arc[a, k] < front[a] and world.time_s > 5.0:  # (after 5 s: spawned at speed)
                    passed += 1
                    ran += int(rules.granted[a] != k)  # crossed without its turn
    assert passed > 0  # traffic goes through the all-way stops
    assert ran == 0
