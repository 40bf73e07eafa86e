"""Scripted agents and hand-picked routes for the closed-loop tests."""

from __future__ import annotations

import functools

import numpy as np

from rap.eval.agent import Observation, SensorConfig
from rap.eval.closed_loop.config import ClosedLoopConfig, ClosedLoopSection
from rap.eval.closed_loop.routes import RouteSpec, build_route, route_town
from rap.eval.closed_loop.runner import _Session, run_route
from rap.trajectory import Trajectory


class PursuitAgent:
    """Drives towards the route target point at ``speed``, blind to lights and traffic."""

    name = "pursuit"
    privileged = False

    def __init__(self, speed: float = 8.0) -> None:
        self.speed = speed

    def sensor_config(self) -> SensorConfig:
        return SensorConfig(rig=None)

    def plan(self, observation: Observation) -> Trajectory:
        target = np.asarray(observation.route_target, dtype=float)
        heading = float(np.arctan2(target[1], target[0]))
        t = observation.sampling.times_s
        d = self.speed * t
        poses = np.stack([d * np.cos(heading), d * np.sin(heading), np.full_like(t, heading)], axis=1)
        return Trajectory(poses, observation.sampling)


class StopAgent:
    """Never moves."""

    name = "stop"
    privileged = False

    def sensor_config(self) -> SensorConfig:
        return SensorConfig(rig=None)

    def plan(self, observation: Observation) -> Trajectory:
        return Trajectory(np.zeros((observation.sampling.num_poses, 3)), observation.sampling)


class _Unchecked(Trajectory):
    """A Trajectory that skips validation (what a careless planner could hand back)."""

    def __post_init__(self) -> None:
        pass


class BadAgent:
    """Raises, or returns NaN poses, or the wrong number of poses (``mode``)."""

    name = "bad"
    privileged = False

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def sensor_config(self) -> SensorConfig:
        return SensorConfig(rig=None)

    def plan(self, observation: Observation):
        if self.mode == "raise":
            raise RuntimeError("planner exploded")
        n = observation.sampling.num_poses
        poses = np.full((n, 3), np.nan) if self.mode == "nan" else np.zeros((n + 2, 3))
        return _Unchecked(poses, observation.sampling)


def quiet_config(**closed_loop) -> ClosedLoopConfig:
    """No background traffic, no parked cars in the parking strips, no background pedestrians."""
    return ClosedLoopConfig(closed_loop=ClosedLoopSection(**{"density": 0.0, "parked_fraction": 0.0, "crosswalk_pedestrians_per_min": 0.0, **closed_loop}))


@functools.lru_cache(maxsize=8)
def straight_route(kind: str, max_length: float = 220.0) -> RouteSpec:
    """A short route with event ``kind`` whose junction movements are all straight and whose
    only all-way-stop junction (if any) is a ``stop_sign`` event's."""
    for town_seed in range(200, 400):
        try:
            spec = build_route(0, town_seed, kind, seed=7, tries=60)
        except ValueError:
            continue
        town = route_town(town_seed)
        stops = [i for i in spec.lanes if town.lanes[i].is_connector and not town.junctions[town.lanes[i].junction].signalized]
        if spec.length <= max_length and all(town.lanes[i].movement in ("", "straight") for i in spec.lanes) and stops == ([spec.event.lane] if kind == "stop_sign" else []):
            return spec
    raise AssertionError(f"no straight {kind} route found")


@functools.lru_cache(maxsize=1)
def ev_route() -> RouteSpec:
    """An ``emergency_vehicle`` route whose junction movements are all straight and without
    all-way stops (found by ``straight_route("emergency_vehicle", 320.0)``; built directly, as
    that search takes ~40 s)."""
    spec = build_route(0, 300, "emergency_vehicle", seed=7, tries=60)
    town = route_town(300)
    assert all(town.lanes[i].movement in ("", "straight") for i in spec.lanes)
    assert not [i for i in spec.lanes if town.lanes[i].is_connector and not town.junctions[town.lanes[i].junction].signalized]
    return spec


def drive(agent, spec, config: ClosedLoopConfig) -> dict:
    """One route driven by ``agent`` (the runner's per-route result)."""
    session = _Session(agent, config)
    try:
        return run_route(session, spec, config)
    finally:
        session.close()


def penalised(record: dict) -> dict:
    """A route record's infractions other than the min-speed report."""
    return {k: v for k, v in record["infractions"].items() if v and k != "min_speed_infractions"}
