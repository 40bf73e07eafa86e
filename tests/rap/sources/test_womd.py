"""Tests for rap/sources/womd.py on the shipped real WOMD scenario."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import shapely
from waymo_open_dataset.protos import scenario_pb2

from rap.scene import AgentType, LaneType, LightState, Scene, StopLineType
from rap.sources.tfrecord import TFRecordError, read_records, write_records
from rap.sources.womd import (
    DEFAULT_LANE_WIDTH,
    MAX_LANE_WIDTH,
    MIN_LANE_WIDTH,
    REAR_AXLE_RATIO,
    iter_womd,
    load_womd,
    scene_from_womd,
)

WOMD_FILE = Path(__file__).parents[3] / "data" / "waymo" / "womd_scenario_637f20cafde22ff8.tfrecord"


@pytest.fixture(scope="module")
def scene() -> Scene:
    return load_womd(WOMD_FILE)


@pytest.fixture(scope="module")
def payload() -> bytes:
    (data,) = read_records(WOMD_FILE)
    return data


def test_scenario_header(scene):
    assert scene.scene_id == "637f20cafde22ff8"
    assert scene.source == f"womd:{WOMD_FILE}@0"
    assert scene.num_steps == 91
    assert scene.current_index == 10
    np.testing.assert_allclose(np.diff(scene.timestamps), 0.1, atol=1e-3)


def test_tracks(scene):
    tr = scene.tracks
    assert tr.num_agents == 83
    assert scene.ego_index == 82
    counts = {t: int(np.sum(tr.types == t)) for t in AgentType}
    assert counts[AgentType.VEHICLE] == 70
    assert counts[AgentType.PEDESTRIAN] == 10
    assert counts[AgentType.CYCLIST] == 3
    assert tr.valid[scene.ego_index].all()
    # No sentinels: invalid entries are 0.
    for name in ("x", "y", "z", "heading", "vx", "vy", "length", "width", "height"):
        assert np.all(getattr(tr, name)[~tr.valid] == 0), name
    assert np.all(tr.length[tr.valid] > 0)
    # Rear axle: NAVSIM's ratio of the median length for vehicles, 0 for everyone else.
    ego_len = np.median(tr.length[scene.ego_index])
    assert tr.rear_axle_offset[scene.ego_index] == pytest.approx(REAR_AXLE_RATIO * ego_len, rel=1e-5)
    assert REAR_AXLE_RATIO == pytest.approx(1.461 / 5.176)
    assert np.all(tr.rear_axle_offset[tr.types != AgentType.VEHICLE] == 0)


def test_ego_pose_and_frame(scene):
    tr = scene.tracks
    e, t = scene.ego_index, scene.current_index
    pose = scene.ego_pose()
    back = tr.rear_axle_offset[e]
    assert math.hypot(pose[0] - tr.x[e, t], pose[1] - tr.y[e, t]) == pytest.approx(back, rel=1e-5)
    local = scene.in_ego_frame()
    np.testing.assert_allclose(local.ego_pose(), [0, 0, 0, 0], atol=1e-6)
    # The logged SDC waits for the whole scenario: it stays at its own frame's origin.
    np.testing.assert_allclose(local.tracks.x[e], back, atol=0.05)
    # The fastest vehicle now drives along +x of its own frame, and moves ahead.
    speed = np.where(tr.valid[:, t] & (tr.types == AgentType.VEHICLE), tr.speed[:, t], 0.0)
    i = int(np.argmax(speed))
    assert speed[i] > 5.0
    own = scene.in_agent_frame(i, t).tracks
    assert own.vx[i, t] == pytest.approx(speed[i], rel=1e-3)
    assert abs(own.vy[i, t]) < 0.05 * speed[i]
    assert own.x[i, t + 5] > own.x[i, t] + 0.4 * speed[i]


def test_map_counts(scene):
    m = scene.map
    assert len(m.lanes) == 199
    assert len(m.road_lines) == 59
    assert len(m.road_edges) == 28
    assert len(m.stop_signs) == 8
    assert len(m.crosswalks) == 4
    assert len(m.speed_bumps) == 3
    assert len(m.driveways) == 0


def test_lanes(scene, payload):
    lanes = scene.map.lanes
    assert set(np.unique(lanes.types)) <= {LaneType.SURFACE_STREET, LaneType.BIKE_LANE}
    assert np.all((lanes.width >= MIN_LANE_WIDTH) & (lanes.width <= MAX_LANE_WIDTH))
    assert np.any(lanes.width != np.float32(DEFAULT_LANE_WIDTH))  # Derived from boundaries.
    # Compare one lane with the proto.
    proto = scenario_pb2.Scenario.FromString(payload)
    feature = next(f for f in proto.map_features if f.id == 203)
    k = lanes.index_of(203)
    assert lanes.successors[k] == tuple(feature.lane.exit_lanes) == (206,)
    assert lanes.predecessors[k] == tuple(feature.lane.entry_lanes)
    assert lanes.left_neighbors[k] == (202,)
    assert lanes.right_neighbors[k] == (216, 210)
    assert lanes.has_speed_limit[k]
    assert lanes.speed_limit[k] == pytest.approx(40 * 0.44704)
    assert lanes.centerlines[k].shape == (len(feature.lane.polyline), 3)
    # Both boundaries are broken white lines ~1.6 m away: a ~3.2 m lane.
    assert 2.8 < lanes.width[k] < 3.6


def test_traffic_lights(scene):
    lights = scene.traffic_lights
    assert len(lights) == 12
    assert lights.states.shape == (12, 91)
    assert lights.valid.any()
    assert np.all(lights.states[~lights.valid] == LightState.UNKNOWN)
    observed = set(np.unique(lights.states[lights.valid]).tolist())
    assert LightState.STOP in observed
    k = int(np.flatnonzero(lights.lane_ids == 443)[0])
    np.testing.assert_allclose(lights.stop_points[k, :2], [-7798.4945614946209, -6686.8465778642058])


def test_stop_lines(scene):
    m = scene.map
    stop = m.stop_lines
    tl = stop.types == StopLineType.TRAFFIC_LIGHT
    assert tl.sum() == len(scene.traffic_lights)
    assert (stop.types == StopLineType.STOP_SIGN).sum() == len({i for ids in m.stop_signs.lane_ids for i in ids})
    for i, line in zip(stop.ids, stop.lines):
        k = m.lanes.index_of(i)
        assert line.shape == (2, 3)
        assert np.linalg.norm(line[1] - line[0]) == pytest.approx(m.lanes.width[k], rel=1e-5)
    # A traffic-light stop line is centred on the stop point and crosses the lane.
    j = int(np.flatnonzero(tl)[0])
    k = int(np.flatnonzero(scene.traffic_lights.lane_ids == stop.ids[j])[0])
    np.testing.assert_allclose(stop.lines[j].mean(axis=0), scene.traffic_lights.stop_points[k])


def test_drivable_area_contains_ego_and_moving_vehicles(scene):
    """The derived drivable area must hold the logged SDC and nearly all moving vehicles."""
    area = scene.map.drivable_polygon
    assert isinstance(area, shapely.MultiPolygon) and area.is_valid and not area.is_empty
    tr = scene.tracks

    # Every corner of the SDC box at every valid step, within a 0.3 m tolerance.
    e = scene.ego_index
    corners = tr.corners_2d()[e][tr.valid[e]].reshape(-1, 2)
    tolerant = area.buffer(0.3)
    assert shapely.contains_xy(tolerant, corners[:, 0], corners[:, 1]).all()
    ego_exact = shapely.contains_xy(area, corners[:, 0], corners[:, 1]).mean()
    assert ego_exact >= 0.99  # Measured: 1.0.

    # Box centres of moving vehicles (max valid speed > 1 m/s) at their valid steps.
    speed = np.where(tr.valid, tr.speed, 0.0)
    moving = (tr.types == AgentType.VEHICLE) & (speed.max(axis=1) > 1.0)
    assert moving.sum() >= 20
    mask = tr.valid & moving[:, None]
    inside = shapely.contains_xy(area, tr.x[mask], tr.y[mask])
    assert inside.mean() >= 0.95  # Measured: 0.981 (one vehicle turns into a parking lot).


def test_drivable_area_keeps_enclosed_blocks_out(scene):
    # The rings are hole-free pieces, but their union restores holes (blocks between streets).
    area = scene.map.drivable_polygon
    assert sum(len(p.interiors) for p in area.geoms) >= 1
    for ring in scene.map.drivable_area.rings:
        assert shapely.Polygon(ring[:, :2]).is_valid
    # Outline heights follow the map (WOMD z is around -185 m here), not z = 0.
    z = scene.map.drivable_area.rings.points[:, 2]
    lane_z = scene.map.lanes.centerlines.points[:, 2]
    assert lane_z.min() - 1.0 <= z.min() and z.max() <= lane_z.max() + 1.0


def test_nan_heading_names_field(payload):
    proto = scenario_pb2.Scenario.FromString(payload)
    assert proto.tracks[12].states[40].valid
    proto.tracks[12].states[40].heading = float("nan")
    with pytest.raises(ValueError) as info:
        scene_from_womd(proto, path="scenario.tfrecord", record=0)
    assert str(info.value) == "scenario.tfrecord record 0: tracks[12].states[40].heading is NaN"


def test_nan_at_invalid_state_is_ignored(payload):
    proto = scenario_pb2.Scenario.FromString(payload)
    i, t = next((i, t) for i, tr in enumerate(proto.tracks) for t, s in enumerate(tr.states) if not s.valid)
    proto.tracks[i].states[t].center_x = float("nan")
    assert scene_from_womd(proto).tracks.x[i, t] == 0.0


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda p: setattr(p, "sdc_track_index", 500), r"sdc_track_index 500 out of range"),
        (lambda p: setattr(p, "current_time_index", 91), r"current_time_index 91 out of range"),
        (lambda p: p.tracks[3].states.pop(), r"tracks\[3\]\.states has 90 entries, expected 91"),
        (lambda p: p.timestamps_seconds.__setitem__(5, 0.0), r"timestamps_seconds\[5\] is not after"),
        (
            lambda p: setattr(p.map_features[0].road_edge.polyline[2], "y", float("inf")),
            r"map_features\[0\] \(id 3\)\.road_edge\.polyline\[2\]\.y is not finite",
        ),
        (lambda p: p.dynamic_map_states.pop(), r"dynamic_map_states has 90 steps, expected 91"),
        (
            lambda p: setattr(p.dynamic_map_states[0].lane_states[1].stop_point, "z", float("nan")),
            r"dynamic_map_states\[0\]\.lane_states\[1\]\.stop_point\.z is not finite",
        ),
        (
            lambda p: setattr(p.map_features[-1].stop_sign.position, "x", float("nan")),
            r"map_features\[300\] \(id 601\)\.stop_sign\.position\.x is not finite",
        ),
    ],
)
def test_conversion_errors_name_file_record_field(payload, mutate, match):
    proto = scenario_pb2.Scenario.FromString(payload)
    mutate(proto)
    with pytest.raises(ValueError, match=r"^x\.tfrecord record 4: " + match):
        scene_from_womd(proto, path="x.tfrecord", record=4)


def test_garbage_payload(tmp_path):
    with pytest.raises(ValueError, match=r"<memory> record 0: payload is not a Scenario"):
        scene_from_womd(b"\xff\xff\xff garbage")


def test_truncated_file_raises_tfrecord_error(tmp_path):
    path = tmp_path / "cut.tfrecord"
    path.write_bytes(WOMD_FILE.read_bytes()[:-1000])
    with pytest.raises(TFRecordError) as info:
        list(iter_womd(path))
    assert info.value.record == 0
    assert str(info.value).startswith(f"{path}: record 0 at byte 0: truncated payload")
    with pytest.raises(TFRecordError, match="cut.tfrecord: record 0"):
        load_womd(path)
    skipped = []
    assert list(iter_womd(path, skip_corrupt=True, on_skip=skipped.append)) == []
    assert [e.record for e in skipped] == [0]


def test_iter_womd_multi_record_skip(tmp_path, payload):
    """Record indices stay aligned with the file when bad records are skipped."""
    proto = scenario_pb2.Scenario.FromString(payload)
    proto.tracks[12].states[40].heading = float("nan")
    path = tmp_path / "three.tfrecord"
    write_records(path, [b"not a proto \xff\xff", proto.SerializeToString(), payload])
    data = bytearray(path.read_bytes())
    data[12 + 3] ^= 0xFF  # Break record 0's payload CRC.
    path.write_bytes(bytes(data))
    skipped = []
    scenes = list(iter_womd(path, skip_corrupt=True, on_skip=skipped.append))
    assert [s.source for s in scenes] == [f"womd:{path}@2"]
    assert isinstance(skipped[0], TFRecordError) and skipped[0].record == 0
    assert "record 1: tracks[12].states[40].heading is NaN" in str(skipped[1])
    with pytest.raises(TFRecordError):
        list(iter_womd(path))
    assert load_womd(path, record=2).scene_id == "637f20cafde22ff8"
    with pytest.raises(IndexError):
        load_womd(WOMD_FILE, record=1)
