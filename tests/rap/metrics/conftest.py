"""Tiny hand-built scoring scenes for the metric tests (no external data).

A straight road along +x: the ego's lane 1 (y in [-1.75, 1.75]) up to x = 80, an intersection
x in [80, 100] crossed by lane connector 3, lane 4 after it; lane 2 (y in [1.75, 5.25]) carries
oncoming traffic. One roadblock polygon covers the road (y in [-1.75, 5.25]) outside the
intersection, the intersection polygon covers x in [80, 100]. Route: lanes 1, 3, 4; centerline
y = 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
import shapely

from rap.metrics.pdm_inputs import EgoState, ObjectKind, ObjectTracks, ScoringScene
from rap.trajectory import NAVSIM_SAMPLING

LANE_HALF = 1.75


def road_polygons() -> dict[str, object]:
    lanes = {
        1: shapely.box(-60.0, -LANE_HALF, 80.0, LANE_HALF),
        2: shapely.box(-60.0, LANE_HALF, 160.0, 3 * LANE_HALF),
        3: shapely.box(80.0, -LANE_HALF, 100.0, LANE_HALF),
        4: shapely.box(100.0, -LANE_HALF, 160.0, LANE_HALF),
    }
    drivable = [shapely.box(-60.0, -LANE_HALF, 80.0, 3 * LANE_HALF), shapely.box(100.0, -LANE_HALF, 160.0, 3 * LANE_HALF)]
    intersection = shapely.box(80.0, -LANE_HALF - 10.0, 100.0, 3 * LANE_HALF + 10.0)
    return {"lanes": lanes, "drivable": drivable + [intersection], "intersection": intersection}


def make_objects(specs: Sequence[dict], num_steps: int = 41) -> ObjectTracks:
    """Constant-velocity boxes; each spec has x, y and optional heading, vx, vy, length, width, kind."""
    if not specs:
        return ObjectTracks.empty(num_steps)
    t = (np.arange(num_steps) * 0.1)[None, :]
    get = lambda key, default: np.array([s.get(key, default) for s in specs], dtype=np.float64)[:, None]  # noqa: E731
    x0, y0, vx, vy = get("x", 0.0), get("y", 0.0), get("vx", 0.0), get("vy", 0.0)
    n = len(specs)
    return ObjectTracks(  # (num_objects, num_steps)
        ids=np.arange(n),
        kinds=np.array([int(s.get("kind", ObjectKind.VEHICLE)) for s in specs]),
        x=x0 + vx * t,
        y=y0 + vy * t,
        heading=np.broadcast_to(get("heading", 0.0), (n, num_steps)),
        vx=np.broadcast_to(vx, (n, num_steps)),
        vy=np.broadcast_to(vy, (n, num_steps)),
        length=get("length", 4.5)[:, 0],
        width=get("width", 2.0)[:, 0],
        valid=np.ones((n, num_steps), dtype=bool),
    )


def make_scene(
    ego_x: float = 0.0,
    ego_speed: float = 10.0,
    objects: Sequence[dict] = (),
    red_light: bool = False,
    num_steps: int = 41,
    with_history: bool = True,
    **kwargs,
) -> ScoringScene:
    roads = road_polygons()
    history = None
    if with_history:
        history = tuple(EgoState(x=ego_x + ego_speed * 0.1 * i, y=0.0, heading=0.0, vx=ego_speed) for i in range(-15, 0))
    line_x = np.arange(-60.0, 160.0, 1.0)
    return ScoringScene(
        ego=EgoState(x=ego_x, y=0.0, heading=0.0, vx=ego_speed),
        objects=make_objects(objects, num_steps),
        drivable_area=roads["drivable"],
        lane_polygons=roads["lanes"],
        intersections=roads["intersection"],
        route_lane_ids=frozenset({1, 3, 4}),
        centerline=np.stack([line_x, np.zeros_like(line_x), np.zeros_like(line_x)], axis=1),
        red_light_lane_ids=tuple(frozenset({3}) if red_light else frozenset() for _ in range(num_steps)),
        ego_history=history,
        speed_limit=kwargs.pop("speed_limit", 10.0),
        **kwargs,
    )


def plan(speed: float, accel: float = 0.0, lateral: float = 0.0, wiggle: float = 0.0, period: float = 2.0) -> np.ndarray:
    """(8, 3) NAVSIM plan in the ego frame: along +x with optional smooth lateral shift / zig-zag."""
    fine = np.linspace(0.0, 4.0, 401)
    x = np.maximum(speed * fine + 0.5 * accel * fine**2, 0.0)
    if accel < 0:
        x = np.maximum.accumulate(np.where(fine <= -speed / accel, x, x.max()))
    u = fine / 4.0
    y = lateral * (3 * u**2 - 2 * u**3) + wiggle * np.sin(2 * np.pi * fine / period)
    h = np.arctan2(np.gradient(y), np.maximum(np.gradient(x), 1e-9))
    pick = np.searchsorted(fine, NAVSIM_SAMPLING.times_s - 1e-9)
    return np.stack([x[pick], y[pick], h[pick]], axis=-1)


@pytest.fixture
def scene_factory():
    return make_scene


@pytest.fixture
def plan_factory():
    return plan


@pytest.fixture
def objects_factory():
    return make_objects
