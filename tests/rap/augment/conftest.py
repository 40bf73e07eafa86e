"""Hand-built scenes for the augmentation tests: a straight two-lane road and a left turn.

Agents are given by their rear-axle poses over time; box centres and velocities are derived
here (velocity = time derivative of the box centre), so every scene is kinematically exact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pytest

from rap.scene import AgentTracks, AgentType, MapElements, PolygonSet, Polylines, Scene, TrafficLights

DT = 0.1  # [s] log step
NUM_STEPS = 91
CURRENT = 10
OFFSET = 1.4  # [m] rear axle to box centre of every test vehicle
TIMES = np.arange(NUM_STEPS) * DT


@dataclass
class Agent:
    """One agent: rear-axle world poses (T, 3) and its box."""

    id: int
    poses: np.ndarray
    type: AgentType = AgentType.VEHICLE
    length: float = 4.8
    width: float = 2.0
    offset: float = OFFSET
    valid: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def straight_poses(x0: float, y0: float, speed: float, accel: float = 0.0, heading: float = 0.0) -> np.ndarray:
    """(T, 3) rear-axle poses along a straight line at constant acceleration (no reversing)."""
    t = TIMES
    s = speed * t + 0.5 * accel * t**2
    if accel < 0:
        t_stop = speed / -accel
        s = np.where(t < t_stop, s, speed * t_stop + 0.5 * accel * t_stop**2)
    return np.stack([x0 + s * np.cos(heading), y0 + s * np.sin(heading), np.full_like(t, heading)], -1)


def left_turn_poses(speed: float = 6.0, radius: float = 15.0, t_turn: float = 1.5) -> np.ndarray:
    """(T, 3) rear-axle poses: straight along +x through the origin-ish, then a left arc."""
    t = TIMES
    s = speed * (t - t_turn)  # arc length from the start of the turn
    x = np.where(s < 0, s, radius * np.sin(np.clip(s, 0, None) / radius))
    y = np.where(s < 0, 0.0, radius * (1 - np.cos(np.clip(s, 0, None) / radius)))
    h = np.where(s < 0, 0.0, np.clip(s, 0, None) / radius)
    return np.stack([x, y, h], -1)


def build_scene(agents: list[Agent], drivable: list[np.ndarray], ego: int = 0, scene_id: str = "synthetic") -> Scene:
    n = len(agents)
    x = np.zeros((n, NUM_STEPS))
    y = np.zeros((n, NUM_STEPS))
    h = np.zeros((n, NUM_STEPS))
    valid = np.ones((n, NUM_STEPS), dtype=bool)
    for i, a in enumerate(agents):
        hh = np.unwrap(a.poses[:, 2])
        x[i] = a.poses[:, 0] + a.offset * np.cos(hh)
        y[i] = a.poses[:, 1] + a.offset * np.sin(hh)
        h[i] = hh
        if a.valid is not None:
            valid[i] = a.valid
    vx = np.gradient(x, TIMES, axis=1)
    vy = np.gradient(y, TIMES, axis=1)
    full = lambda v: np.array([[getattr(a, v)] * NUM_STEPS for a in agents], dtype=np.float32)  # noqa: E731
    tracks = AgentTracks(
        ids=np.array([a.id for a in agents]),
        types=np.array([int(a.type) for a in agents]),
        x=np.where(valid, x, 0.0),
        y=np.where(valid, y, 0.0),
        z=np.where(valid, 0.8, 0.0),
        heading=np.where(valid, h, 0.0),
        vx=np.where(valid, vx, 0.0),
        vy=np.where(valid, vy, 0.0),
        length=full("length"),
        width=full("width"),
        height=np.full((n, NUM_STEPS), 1.6, dtype=np.float32),
        valid=valid,
        rear_axle_offset=np.array([a.offset for a in agents]),
    )
    area = PolygonSet(ids=np.arange(len(drivable)), rings=Polylines.from_list(drivable))
    empty = MapElements.empty()
    return Scene(
        scene_id=scene_id,
        source=f"test:{scene_id}",
        timestamps=TIMES.copy(),
        current_index=CURRENT,
        tracks=tracks,
        ego_index=ego,
        map=dataclasses.replace(empty, drivable_area=area),
        traffic_lights=TrafficLights.empty(NUM_STEPS),
    )


def _rect(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


@pytest.fixture(scope="session")
def straight_scene() -> Scene:
    """A straight road along +x, drivable y in [-1.3, 5.25] (a narrow right shoulder).

    Rows: 0 ego (rear axle on y = 0 at 10 m/s, at x = 0 at the current step); 1 a car parked
    beside the ego's current position at y = 2.3 (its box spans y in [1.3, 3.3]); 2 a car in
    the left lane at a constant 8 m/s; 3 a car in the left lane accelerating at 2 m/s^2;
    4 a pedestrian on the shoulder; 5 a car that appears only at step 30.
    """
    late = np.zeros(NUM_STEPS, dtype=bool)
    late[30:] = True
    agents = [
        Agent(2406, straight_poses(-10.0, 0.0, 10.0)),
        Agent(7, straight_poses(-1.4, 2.3, 0.0), length=4.5),
        Agent(8, straight_poses(-30.0, 3.5, 8.0)),
        Agent(9, straight_poses(-40.0, 3.5, 6.0, accel=2.0)),
        Agent(10, straight_poses(30.0, -1.0, 1.2, heading=np.pi), type=AgentType.PEDESTRIAN, length=0.6, width=0.6, offset=0.0),
        Agent(11, straight_poses(20.0, 3.5, 5.0), valid=late),
    ]
    return build_scene(agents, [_rect(-200.0, 400.0, -1.3, 5.25)], scene_id="straight")


@pytest.fixture(scope="session")
def turn_scene() -> Scene:
    """The ego (row 0) drives straight then turns left on a 15 m radius at 6 m/s (the turn
    starts 0.5 s after the current step); row 1 is the same motion mirrored (a right turn)."""
    left = left_turn_poses()
    right = left.copy()
    right[:, 1] = -right[:, 1] - 30.0
    right[:, 2] = -right[:, 2]
    agents = [Agent(1, left), Agent(2, right)]
    return build_scene(agents, [_rect(-100.0, 100.0, -100.0, 100.0)], scene_id="turn")


@pytest.fixture(scope="session")
def stopped_scene() -> Scene:
    """The ego (row 0) stands still at the origin for the whole log."""
    return build_scene([Agent(5, straight_poses(0.0, 0.0, 0.0))], [_rect(-50.0, 50.0, -10.0, 10.0)], scene_id="stopped")
