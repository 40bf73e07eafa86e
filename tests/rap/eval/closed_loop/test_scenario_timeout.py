"""ScenarioTimeoutTest (``scenario_timeouts``, x0.7): an ego that does not get past a blocking
obstacle (the ``parked`` event) within ``closed_loop.scenario_timeout_s`` of reaching it."""

from __future__ import annotations

import numpy as np
import pytest

from rap.eval.closed_loop.infractions import (
    SCENARIO_PASSED_M,
    SCENARIO_TRIGGER_M,
    Monitor,
)
from rap.eval.closed_loop.world import World
from rap.eval.driving_score import merge_repeats, route_record
from rap.sim.bicycle import PACIFICA, StateIndex
from tests.rap.eval.closed_loop.scripted import quiet_config, straight_route

BUDGET_S = 5.0


def _world(kind: str = "parked") -> tuple[World, Monitor]:
    cfg = quiet_config(scenario_timeout_s=BUDGET_S).closed_loop
    world = World(straight_route(kind), cfg.world(), cfg.seed)
    return world, Monitor(world, cfg.monitor())


def _place(world: World, arc: float) -> None:
    """The ego standing with its box centre on the route at ``arc``."""
    p, t = world.route_pose(arc)
    rear = p - PACIFICA.rear_axle_to_center * t
    world.ego[:] = 0.0
    world.ego[[StateIndex.X, StateIndex.Y, StateIndex.HEADING]] = (rear[0], rear[1], np.arctan2(t[1], t[0]))
    world.plan_states = None


def _walk(world: World, monitor: Monitor, to_arc: float, step_m: float = 4.0) -> None:
    """Moves the ego along the route in steps the monitor's progress can follow, one tick each."""
    arc = monitor.progress
    while arc < to_arc:
        arc = min(arc + step_m, to_arc)
        _place(world, arc)
        world.step()
        monitor.observe()


def _hold(world: World, monitor: Monitor, seconds: float) -> None:
    for _ in range(int(round(seconds / world.dt))):
        world.step()
        monitor.observe()


def test_standing_before_the_parked_car_past_the_budget_is_one_scenario_timeout():
    world, monitor = _world()
    arc = world.spec.event.arc
    _walk(world, monitor, arc - SCENARIO_TRIGGER_M + 2.0)
    start = monitor.scenario_clock[1]  # the clock started when the ego came within the trigger distance
    assert start is not None and world.time_s - start < 0.25
    _hold(world, monitor, BUDGET_S - 0.5)
    assert not [i for i in monitor.infractions if i.name == "scenario_timeouts"]
    _hold(world, monitor, 2.0)
    timeouts = [i for i in monitor.infractions if i.name == "scenario_timeouts"]
    assert len(timeouts) == 1 and timeouts[0].message == "Agent timed out a scenario"
    assert BUDGET_S < timeouts[0].time_s - start <= BUDGET_S + 0.2
    _hold(world, monitor, 2 * BUDGET_S)  # once per scenario
    assert len([i for i in monitor.infractions if i.name == "scenario_timeouts"]) == 1
    record = route_record(0, "r", 50.0, merge_repeats(timeouts), route_length_m=world.length, duration_game_s=world.time_s, duration_system_s=0.0)
    assert record["scores"]["score_penalty"] == pytest.approx(0.7)
    assert record["infractions"]["scenario_timeouts"] == ["Agent timed out a scenario"]


def test_getting_past_the_parked_car_in_time_is_no_scenario_timeout():
    world, monitor = _world()
    arc = world.spec.event.arc
    _walk(world, monitor, arc - SCENARIO_TRIGGER_M + 2.0)
    _hold(world, monitor, BUDGET_S - 1.0)
    _walk(world, monitor, arc + SCENARIO_PASSED_M + 1.0)
    _hold(world, monitor, 2 * BUDGET_S)
    assert not [i for i in monitor.infractions if i.name == "scenario_timeouts"]


def test_only_blocking_events_have_the_test():
    world, monitor = _world("red_light")
    assert monitor.scenario_clock is None
    _walk(world, monitor, world.spec.event.arc - 10.0)
    _hold(world, monitor, 2 * BUDGET_S)
    assert not [i for i in monitor.infractions if i.name == "scenario_timeouts"]
