"""Shared fixtures: tiny hand-built scenes (no external data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rap.scene import (
    AgentTracks,
    AgentType,
    Lanes,
    LaneType,
    LightState,
    LineSet,
    MapElements,
    PolygonSet,
    Polylines,
    RoadEdgeType,
    RoadLineType,
    Scene,
    StopLineType,
    StopSigns,
    TrafficLights,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (holds ``data/``)."""
    return REPO_ROOT


def _tiny_tracks_kwargs() -> dict[str, Any]:
    """Three agents over 5 steps (0.1 s apart): a vehicle driving diagonally (the ego), a parked
    vehicle ahead of it, and a pedestrian that appears at step 1."""
    n, t = 3, 5
    steps = np.arange(t, dtype=np.float64)
    h0 = 0.3  # [rad] ego heading.
    x = np.zeros((n, t))
    y = np.zeros((n, t))
    z = np.full((n, t), 0.8)
    heading = np.zeros((n, t))
    vx = np.zeros((n, t))
    vy = np.zeros((n, t))
    # Ego: 10 m/s along h0 from (1, 2).
    x[0] = 1.0 + steps * np.cos(h0)
    y[0] = 2.0 + steps * np.sin(h0)
    heading[0] = h0
    vx[0] = 10.0 * np.cos(h0)
    vy[0] = 10.0 * np.sin(h0)
    # Parked vehicle facing the other way.
    x[1], y[1], heading[1] = 20.0, 5.0, np.pi - 0.1
    # Pedestrian walking north.
    x[2] = 15.0
    y[2] = -3.0 + 0.14 * steps
    heading[2] = np.pi / 2
    vy[2] = 1.4
    z[2] = 0.9
    valid = np.ones((n, t), dtype=bool)
    valid[2, 0] = False
    x[2, 0] = y[2, 0] = z[2, 0] = heading[2, 0] = vy[2, 0] = 0.0
    length = np.array([[4.8] * t, [4.5] * t, [0.6] * t], dtype=np.float32)
    width = np.array([[2.0] * t, [1.9] * t, [0.6] * t], dtype=np.float32)
    height = np.array([[1.6] * t, [1.5] * t, [1.8] * t], dtype=np.float32)
    length[2, 0] = width[2, 0] = height[2, 0] = 0.0
    return dict(
        ids=np.array([100, 101, 102]),
        types=np.array([AgentType.VEHICLE, AgentType.VEHICLE, AgentType.PEDESTRIAN]),
        x=x, y=y, z=z, heading=heading, vx=vx, vy=vy,
        length=length, width=width, height=height, valid=valid,
        rear_axle_offset=np.array([1.35, 1.27, 0.0]),
    )  # fmt: skip


def _tiny_map() -> MapElements:
    lanes = Lanes(
        ids=np.array([1, 2]),
        centerlines=Polylines.from_list(
            [np.array([[-10.0, 0.0], [0.0, 0.0], [30.0, 0.0]]), np.array([[30.0, 3.5], [-10.0, 3.5]])]
        ),
        types=np.array([LaneType.SURFACE_STREET, LaneType.SURFACE_STREET]),
        speed_limit=np.array([13.4, 13.4]),
        has_speed_limit=np.array([True, False]),
        width=np.array([3.5, 3.5]),
        interpolating=np.array([False, False]),
        successors=((), ()),
        predecessors=((), ()),
        left_neighbors=((2,), ()),
        right_neighbors=((), (1,)),
    )
    road_lines = LineSet(
        ids=np.array([10]),
        lines=Polylines.from_list([np.array([[-10.0, 1.75, 0.0], [30.0, 1.75, 0.0]])]),
        types=np.array([RoadLineType.BROKEN_SINGLE_WHITE]),
    )
    road_edges = LineSet(
        ids=np.array([20, 21]),
        lines=Polylines.from_list(
            [np.array([[-10.0, -1.75], [30.0, -1.75]]), np.array([[-10.0, 5.25], [30.0, 5.25]])]
        ),
        types=np.array([RoadEdgeType.BOUNDARY, RoadEdgeType.BOUNDARY]),
    )
    stop_lines = LineSet(
        ids=np.array([1]),
        lines=Polylines.from_list([np.array([[25.0, 1.75], [25.0, -1.75]])]),
        types=np.array([StopLineType.TRAFFIC_LIGHT]),
    )
    crosswalks = PolygonSet(
        ids=np.array([30]),
        rings=Polylines.from_list([np.array([[26.0, -1.75], [28.0, -1.75], [28.0, 5.25], [26.0, 5.25]])]),
    )
    stop_signs = StopSigns(ids=np.array([40]), positions=np.array([[-8.0, 6.0, 2.0]]), lane_ids=((2,),))
    drivable_area = PolygonSet(
        ids=np.array([0]),
        rings=Polylines.from_list([np.array([[-10.0, -1.75], [30.0, -1.75], [30.0, 5.25], [-10.0, 5.25]])]),
    )
    return MapElements(
        lanes=lanes,
        road_lines=road_lines,
        road_edges=road_edges,
        stop_lines=stop_lines,
        crosswalks=crosswalks,
        speed_bumps=PolygonSet.empty(),
        driveways=PolygonSet.empty(),
        stop_signs=stop_signs,
        drivable_area=drivable_area,
    )


def _tiny_traffic_lights() -> TrafficLights:
    states = np.array([[LightState.GO, LightState.GO, LightState.CAUTION, LightState.STOP, 0]])
    return TrafficLights(
        lane_ids=np.array([1]),
        stop_points=np.array([[25.0, 0.0, 0.0]]),
        states=states,
        valid=np.array([[True, True, True, True, False]]),
    )


@pytest.fixture
def tiny_tracks_kwargs() -> dict[str, Any]:
    """Keyword arguments of a valid 3-agent, 5-step ``AgentTracks`` (fresh per test)."""
    return _tiny_tracks_kwargs()


@pytest.fixture
def tiny_scene() -> Scene:
    """A hand-built 5-step scene: ego (row 0) driving along a two-lane road, a parked vehicle,
    a pedestrian (invalid at step 0), a crosswalk, a stop sign, one traffic light."""
    return Scene(
        scene_id="tiny",
        source="test:tiny",
        timestamps=np.arange(5) * 0.1,
        current_index=2,
        tracks=AgentTracks(**_tiny_tracks_kwargs()),
        ego_index=0,
        map=_tiny_map(),
        traffic_lights=_tiny_traffic_lights(),
    )


def pytest_report_header(config):
    """Name the OpenGL renderer in the test log (llvmpipe on CPU machines and in CI)."""
    from rasterizer.context import ContextError, context_info, create_context

    try:
        ctx = create_context()
    except ContextError as exc:
        return f"OpenGL: unavailable ({exc})"
    info = context_info(ctx)
    ctx.release()
    return f"OpenGL: {info.renderer} | {info.version}"


# -- GL context: the only place tests create the shared context (one per session) ------------
@pytest.fixture(scope="session")
def ctx_static():
    from rasterizer.context import context_info, create_context

    ctx = create_context()
    info = context_info(ctx)
    print(f"GL renderer: {info.renderer} / {info.version}")
    yield ctx
    ctx.release()


@pytest.fixture()
def ctx(ctx_static):
    """The shared context, with no GL error before and after the test."""
    import moderngl

    assert ctx_static.error == "GL_NO_ERROR"
    ctx_static.enable_only(moderngl.NOTHING)
    ctx_static.__enter__()  # current again, whatever other contexts did meanwhile
    yield ctx_static
    assert ctx_static.error == "GL_NO_ERROR"
