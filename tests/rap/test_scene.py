"""Tests for rap/scene.py on hand-built scenes (see tests/conftest.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely

from rap import geometry
from rap.scene import (
    AgentTracks,
    AgentType,
    LightColor,
    LightState,
    MapElements,
    PolygonSet,
    Polylines,
    Scene,
    TrafficLights,
    light_color,
)


# ----------------------------------------------------------------------------------------------
# Enums and small types.
# ----------------------------------------------------------------------------------------------


def test_light_color_mapping():
    states = np.array([[s.value for s in LightState]])
    colors = light_color(states)
    assert colors.shape == states.shape and colors.dtype == np.int8
    expected = {
        LightState.UNKNOWN: LightColor.UNKNOWN,
        LightState.ARROW_STOP: LightColor.RED,
        LightState.STOP: LightColor.RED,
        LightState.FLASHING_STOP: LightColor.RED,
        LightState.ARROW_CAUTION: LightColor.YELLOW,
        LightState.CAUTION: LightColor.YELLOW,
        LightState.FLASHING_CAUTION: LightColor.YELLOW,
        LightState.ARROW_GO: LightColor.GREEN,
        LightState.GO: LightColor.GREEN,
    }
    assert {LightState(s): LightColor(c) for s, c in zip(states[0], colors[0])} == expected
    with pytest.raises(ValueError, match="LightState"):
        light_color(np.array([9]))


def test_agent_type_values_follow_womd():
    assert [int(t) for t in AgentType] == [0, 1, 2, 3, 4]
    assert AgentType.CYCLIST == 3


def test_polylines_from_list_and_access():
    pl = Polylines.from_list([np.zeros((2, 2)), np.ones((3, 3)), np.zeros((0, 3))])
    assert len(pl) == 3
    assert pl.points.shape == (5, 3) and pl.points.dtype == np.float64
    np.testing.assert_array_equal(pl.offsets, [0, 2, 5, 5])
    np.testing.assert_array_equal(pl.lengths, [2, 3, 0])
    np.testing.assert_array_equal(pl[1], np.ones((3, 3)))
    np.testing.assert_array_equal(pl[-3][:, 2], [0.0, 0.0])  # 2D input padded with z = 0.
    assert pl[2].shape == (0, 3)
    with pytest.raises(IndexError):
        pl[3]
    np.testing.assert_array_equal(pl.element_index, [0, 0, 1, 1, 1])
    sub = pl.select([1, 0])
    np.testing.assert_array_equal(sub.lengths, [3, 2])
    np.testing.assert_array_equal(sub[0], pl[1])
    assert len(Polylines.empty()) == 0 and len(Polylines.from_list([])) == 0


def test_polylines_arc_lengths_and_transform():
    pl = Polylines.from_list([[[0, 0], [3, 4]], [[0, 0]], [[0, 0], [1, 0], [1, 1]]])
    np.testing.assert_allclose(pl.arc_lengths, [5.0, 0.0, 2.0])
    moved = pl.transformed(lambda p: p + np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(moved.points[:, 0], pl.points[:, 0] + 1)
    np.testing.assert_array_equal(moved.offsets, pl.offsets)


def test_polylines_validation_names_field():
    with pytest.raises(ValueError, match=r"Polylines\.offsets"):
        Polylines(points=np.zeros((3, 3)), offsets=np.array([0, 2]))
    with pytest.raises(ValueError, match=r"Polylines\.offsets: must be non-decreasing"):
        Polylines(points=np.zeros((3, 3)), offsets=np.array([0, 2, 1, 3]))
    with pytest.raises(ValueError, match=r"Polylines\.points: expected shape"):
        Polylines(points=np.zeros((3, 2)), offsets=np.array([0, 3]))
    with pytest.raises(ValueError, match=r"Polylines\.points: non-finite"):
        Polylines(points=np.array([[0.0, np.nan, 0.0]]), offsets=np.array([0, 1]))


def test_polygon_set_repairs_invalid_rings():
    bowtie = np.array([[0.0, 0.0], [2.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    square = np.array([[5.0, 0.0], [6.0, 0.0], [6.0, 1.0], [5.0, 1.0]])
    ps = PolygonSet(ids=np.array([1, 2]), rings=Polylines.from_list([bowtie, square]))
    multi = ps.to_shapely()
    assert isinstance(multi, shapely.MultiPolygon)
    assert multi.is_valid
    assert multi.area == pytest.approx(2.0 + 1.0)
    assert ps.to_shapely(union=True).area == pytest.approx(3.0)
    assert PolygonSet.empty().to_shapely().is_empty
    with pytest.raises(ValueError, match=r"PolygonSet\.rings: ring 0 is closed"):
        PolygonSet(ids=np.array([1]), rings=Polylines.from_list([np.vstack([square, square[:1]])]))
    with pytest.raises(ValueError, match=r"PolygonSet\.rings: ring 0 has fewer than 3"):
        PolygonSet(ids=np.array([1]), rings=Polylines.from_list([square[:2]]))


def test_empty_map_and_lights():
    m = MapElements.empty()
    assert len(m.lanes) == 0 and len(m.stop_signs) == 0
    assert m.drivable_polygon.is_empty
    lights = TrafficLights.empty(7)
    assert lights.states.shape == (0, 7) and lights.num_steps == 7


# ----------------------------------------------------------------------------------------------
# AgentTracks validation.
# ----------------------------------------------------------------------------------------------


def test_tracks_coerce_dtypes_and_freeze(tiny_tracks_kwargs):
    kw = tiny_tracks_kwargs
    kw["x"] = kw["x"].astype(np.float32)
    kw["valid"] = kw["valid"].astype(np.int64)
    kw["heading"] = kw["heading"] + 2 * np.pi  # Wrapped on construction.
    tr = AgentTracks(**kw)
    assert tr.x.dtype == np.float64 and tr.valid.dtype == bool and tr.types.dtype == np.int8
    assert tr.length.dtype == np.float32 and tr.rear_axle_offset.dtype == np.float32
    assert np.all(tr.heading >= -np.pi) and np.all(tr.heading < np.pi)
    assert tr.heading[0, 0] == pytest.approx(0.3)
    assert not tr.x.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        tr.x = tr.x  # type: ignore[misc]
    assert (tr.num_agents, tr.num_steps) == (3, 5) and len(tr) == 3
    assert tr.xy.shape == (3, 5, 2) and tr.xyz.shape == (3, 5, 3)
    np.testing.assert_allclose(tr.speed[0], 10.0)
    assert tr.corners_2d(2).shape == (3, 4, 2) and tr.corners_2d().shape == (3, 5, 4, 2)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("heading", np.zeros((3, 4)), r"AgentTracks\.heading: expected shape \(3, 5\)"),
        ("x", np.full((3, 5), np.nan), r"AgentTracks\.x: non-finite value"),
        ("types", np.array([1, 2, 9]), r"AgentTracks\.types: value 9 .* not a AgentType"),
        ("ids", np.array([1, 1, 2]), r"AgentTracks\.ids: ids must be unique"),
        ("valid", np.full((3, 5), 2), r"AgentTracks\.valid: expected bool"),
        ("rear_axle_offset", np.array([-1.0, 0, 0]), r"AgentTracks\.rear_axle_offset"),
        ("length", -np.ones((3, 5)), r"AgentTracks\.length: negative"),
        ("ids", np.array([1.5, 2, 3]), r"AgentTracks\.ids: expected integers"),
    ],
)
def test_tracks_validation_names_field(tiny_tracks_kwargs, field, value, match):
    tiny_tracks_kwargs[field] = value
    with pytest.raises(ValueError, match=match):
        AgentTracks(**tiny_tracks_kwargs)


# ----------------------------------------------------------------------------------------------
# Scene validation.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"timestamps": np.array([0.0, 0.1, 0.1, 0.3, 0.4])}, r"Scene\.timestamps: must be strictly"),
        ({"timestamps": np.arange(4) * 0.1}, r"Scene\.tracks: have 5 steps, expected 4"),
        ({"current_index": 5}, r"Scene\.current_index: 5 out of range"),
        ({"ego_index": 3}, r"Scene\.ego_index: 3 out of range"),
        ({"ego_index": 1.0}, r"Scene\.ego_index: expected int"),
        ({"traffic_lights": TrafficLights.empty(4)}, r"Scene\.traffic_lights: have 4 steps"),
        ({"map": None}, r"Scene\.map: expected MapElements"),
        ({"scene_id": 3}, r"Scene\.scene_id: expected str"),
    ],
)
def test_scene_validation_names_field(tiny_scene, changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(tiny_scene, **changes)


def test_traffic_light_validation(tiny_scene):
    lights = tiny_scene.traffic_lights
    with pytest.raises(ValueError, match=r"TrafficLights\.states: value 12"):
        dataclasses.replace(lights, states=np.full((1, 5), 12))
    with pytest.raises(ValueError, match=r"TrafficLights\.valid: expected shape \(1, 5\)"):
        dataclasses.replace(lights, valid=np.ones((1, 4), dtype=bool))
    np.testing.assert_array_equal(lights.colors[0, :4], [3, 3, 2, 1])


# ----------------------------------------------------------------------------------------------
# Poses and frames.
# ----------------------------------------------------------------------------------------------


def test_agent_pose_is_rear_axle_on_ground(tiny_scene):
    pose = tiny_scene.agent_pose(0, 2)
    tr = tiny_scene.tracks
    h = 0.3
    np.testing.assert_allclose(
        pose,
        [tr.x[0, 2] - 1.35 * np.cos(h), tr.y[0, 2] - 1.35 * np.sin(h), 0.8 - 0.8, h],
        atol=1e-6,
    )
    np.testing.assert_allclose(tiny_scene.ego_pose(), pose)  # Defaults to current_index.
    ped = tiny_scene.agent_pose(2, 3)  # No rear-axle offset: box centre on the ground.
    np.testing.assert_allclose(ped[:3], [15.0, -3.0 + 0.42, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="not valid at step 0"):
        tiny_scene.agent_pose(2, 0)
    with pytest.raises(ValueError, match="out of range"):
        tiny_scene.agent_pose(3, 0)


@pytest.mark.parametrize(("agent", "step"), [(0, 2), (1, 4), (2, 1)])
def test_in_agent_frame(tiny_scene, agent, step):
    local = tiny_scene.in_agent_frame(agent, step)
    tr, ltr = tiny_scene.tracks, local.tracks
    assert local.ego_index == tiny_scene.ego_index

    # The agent's own frame origin is at (0, 0, 0) with heading 0.
    np.testing.assert_allclose(local.agent_pose(agent, step), [0, 0, 0, 0], atol=1e-9)
    offset = float(tr.rear_axle_offset[agent])
    np.testing.assert_allclose(
        [ltr.x[agent, step], ltr.y[agent, step], ltr.z[agent, step]],
        [offset, 0.0, 0.5 * tr.height[agent, step]],
        atol=1e-6,
    )

    # Distances between agents, speeds and relative headings are preserved at valid steps.
    v = tr.valid
    for s in range(tr.num_steps):
        rows = np.flatnonzero(v[:, s])
        d_world = np.linalg.norm(tr.xyz[rows, s, None] - tr.xyz[None, rows, s], axis=-1)
        d_local = np.linalg.norm(ltr.xyz[rows, s, None] - ltr.xyz[None, rows, s], axis=-1)
        np.testing.assert_allclose(d_local, d_world, atol=1e-9)
    np.testing.assert_allclose(ltr.speed[v], tr.speed[v], atol=1e-9)
    dh = geometry.wrap_angle(ltr.heading - tr.heading + tr.heading[agent, step])
    np.testing.assert_allclose(np.sin(dh[v]), 0.0, atol=1e-9)
    assert np.all(ltr.x[~v] == 0) and np.all(ltr.vx[~v] == 0)

    # Map points: distances to the agent are preserved; transforming back restores them.
    pose = tiny_scene.agent_pose(agent, step)
    lane_world = tiny_scene.map.lanes.centerlines.points
    lane_local = local.map.lanes.centerlines.points
    np.testing.assert_allclose(
        geometry.from_frame(lane_local, pose[:3], pose[3]), lane_world, atol=1e-9
    )
    np.testing.assert_allclose(
        np.linalg.norm(lane_local, axis=1), np.linalg.norm(lane_world - pose[:3], axis=1)
    )
    for world, loc in [
        (tiny_scene.traffic_lights.stop_points, local.traffic_lights.stop_points),
        (tiny_scene.map.stop_signs.positions, local.map.stop_signs.positions),
        (tiny_scene.map.crosswalks.rings.points, local.map.crosswalks.rings.points),
        (tiny_scene.map.stop_lines.lines.points, local.map.stop_lines.lines.points),
    ]:
        np.testing.assert_allclose(geometry.from_frame(loc, pose[:3], pose[3]), world, atol=1e-9)
    assert local.map.drivable_polygon.area == pytest.approx(tiny_scene.map.drivable_polygon.area)
    np.testing.assert_array_equal(local.traffic_lights.states, tiny_scene.traffic_lights.states)


def test_in_agent_frame_world_axes(tiny_scene):
    # The parked vehicle (row 1) is ahead of the ego and faces it.
    local = tiny_scene.in_ego_frame(2)
    assert local.tracks.x[1, 2] > 10
    assert abs(local.tracks.heading[1, 2]) > 2.5
    # Ego velocity is along its own x axis.
    np.testing.assert_allclose([local.tracks.vx[0, 2], local.tracks.vy[0, 2]], [10.0, 0.0], atol=1e-9)


def test_in_agent_frame_rejects_invalid_agent(tiny_scene):
    with pytest.raises(ValueError, match="agent 2 .* not valid at step 0"):
        tiny_scene.in_agent_frame(2, 0)


def test_with_ego(tiny_scene):
    other = tiny_scene.with_ego(1)
    assert other.ego_index == 1 and tiny_scene.ego_index == 0
    np.testing.assert_allclose(other.ego_pose(0), tiny_scene.agent_pose(1, 0))
    with pytest.raises(ValueError, match=r"Scene\.ego_index"):
        tiny_scene.with_ego(7)


def test_scene_round_trip_through_frame(tiny_scene):
    """World -> agent frame -> world (via the inverse pose) restores every track position."""
    pose = tiny_scene.agent_pose(1, 3)
    local = tiny_scene.in_agent_frame(1, 3)
    v = tiny_scene.tracks.valid
    back = geometry.from_frame(local.tracks.xyz, pose[:3], pose[3])
    np.testing.assert_allclose(back[v], tiny_scene.tracks.xyz[v], atol=1e-9)
    assert isinstance(local, Scene)
