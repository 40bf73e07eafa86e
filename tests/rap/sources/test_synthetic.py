"""Tests for rap/sources/synthetic.py: the seeded procedural towns and expert logs."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import shapely

from rap.scene import AgentType, LightState, Scene, StopLineType
from rap.sources.synthetic.world import (
    SyntheticConfig,
    SyntheticLog,
    TownConfig,
    TrafficConfig,
    generate_log,
    generate_scene,
    load_synthetic,
)

SEEDS = (0, 1, 2, 3, 4, 5)
REAR_AXLE_RATIO = 1.461 / 5.176  # NAVSIM vehicle, as womd.py.
GREEN = (LightState.GO, LightState.CAUTION)


@pytest.fixture(scope="module")
def logs() -> dict[int, SyntheticLog]:
    return {seed: generate_log(seed) for seed in SEEDS}


@pytest.fixture(scope="module")
def light_log() -> SyntheticLog:
    """Two minutes of signals in a town without background traffic (fast)."""
    quiet = TrafficConfig(
        vehicle_density=0.0, entry_rate=0.0, num_pedestrians=0, num_cyclists=0, parked_fraction=0.0
    )
    return generate_log(11, SyntheticConfig(num_steps=1200, traffic=quiet))


def _all_arrays(scene: Scene) -> dict[str, np.ndarray]:
    tr, m, tl = scene.tracks, scene.map, scene.traffic_lights
    out = {f"tracks.{f.name}": getattr(tr, f.name) for f in dataclasses.fields(tr)}
    out.update({f"lights.{f.name}": getattr(tl, f.name) for f in dataclasses.fields(tl)})
    out["timestamps"] = scene.timestamps
    out["lanes.points"] = m.lanes.centerlines.points
    out["lanes.width"] = m.lanes.width
    out["lanes.speed_limit"] = m.lanes.speed_limit
    for name in ("road_lines", "road_edges", "stop_lines"):
        out[f"{name}.points"] = getattr(m, name).lines.points
    for name in ("crosswalks", "drivable_area"):
        out[f"{name}.points"] = getattr(m, name).rings.points
    out["stop_signs.positions"] = m.stop_signs.positions
    return out


# ----------------------------------------------------------------------------------------------
# API, determinism, scene header.
# ----------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_and_seeds_differ():
    a, b = generate_scene(3), generate_scene(3)
    arrays_a, arrays_b = _all_arrays(a), _all_arrays(b)
    for name, value in arrays_a.items():
        other = arrays_b[name]
        assert value.dtype == other.dtype and value.shape == other.shape, name
        assert value.tobytes() == other.tobytes(), name
    assert a.map.lanes.successors == b.map.lanes.successors
    c = generate_scene(4)
    assert c.map.lanes.centerlines.points.shape != a.map.lanes.centerlines.points.shape or not np.array_equal(
        c.map.lanes.centerlines.points, a.map.lanes.centerlines.points
    )


def test_traffic_settings_do_not_change_the_town():
    quiet = SyntheticConfig(num_steps=30, traffic=TrafficConfig(vehicle_density=0.0, num_pedestrians=0))
    a, b = generate_scene(9, quiet), generate_scene(9, SyntheticConfig(num_steps=30))
    assert np.array_equal(a.map.lanes.centerlines.points, b.map.lanes.centerlines.points)
    assert a.tracks.num_agents < b.tracks.num_agents


def test_load_synthetic_matches_generate_scene():
    config = SyntheticConfig(num_steps=40)
    a, b = load_synthetic("5", config), generate_scene(5, config)
    assert a.tracks.x.tobytes() == b.tracks.x.tobytes()
    for bad in ("-1", "x", "1.5"):
        with pytest.raises(ValueError, match="seed"):
            load_synthetic(bad)
    with pytest.raises(ValueError, match="seed"):
        generate_scene(-3)
    with pytest.raises(TypeError, match="SyntheticConfig"):
        load_synthetic(5, 0)  # A record index is not a config.


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(current_index=10), "current_index"),
        (dict(num_steps=20, current_index=20), "current_index"),
        (dict(num_steps=5), "num_steps"),
        (dict(warmup_steps=-1), "warmup_steps"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"SyntheticConfig.{field}"):
        SyntheticConfig(**kwargs)


def test_sub_config_validation():
    with pytest.raises(ValueError, match="TownConfig.nodes_x"):
        TownConfig(nodes_x=(1, 3))
    with pytest.raises(ValueError, match="TownConfig.lane_width"):
        TownConfig(lane_width=(2.5, 3.0))
    with pytest.raises(ValueError, match="TrafficConfig.parked_fraction"):
        TrafficConfig(parked_fraction=1.5)


def test_scene_header(logs):
    for seed, log in logs.items():
        scene = log.scene
        assert scene.source == f"synthetic:{seed}"
        assert scene.scene_id == f"synthetic-{seed}"
        assert scene.num_steps == SyntheticConfig().num_steps
        np.testing.assert_allclose(scene.timestamps, 0.1 * np.arange(scene.num_steps), atol=1e-12)
        assert scene.timestamps[scene.current_index] >= 1.5
        assert scene.tracks.valid[scene.ego_index].all()
        assert scene.tracks.types[scene.ego_index] == AgentType.VEHICLE
        scene.in_ego_frame()  # The ego pose is usable at the current step.


def test_generation_time():
    """A default scene takes well under a second on one core (lenient bound: shared CI)."""
    start = time.perf_counter()
    generate_scene(0)
    assert time.perf_counter() - start < 3.0


# ----------------------------------------------------------------------------------------------
# Map.
# ----------------------------------------------------------------------------------------------


def test_lane_attributes(logs):
    for log in logs.values():
        lanes = log.scene.map.lanes
        assert lanes.has_speed_limit.all()
        assert np.all((lanes.speed_limit > 10.0) & (lanes.speed_limit < 16.0))
        assert np.all((lanes.width >= 3.0 - 1e-6) & (lanes.width <= 3.8 + 1e-6))
        interp = lanes.interpolating
        assert interp.any() and (~interp).any()
        for k in np.flatnonzero(interp):
            # A connector joins exactly one approach lane to one exit lane.
            assert len(lanes.predecessors[k]) == 1 and len(lanes.successors[k]) == 1
            for other in lanes.predecessors[k] + lanes.successors[k]:
                assert not interp[lanes.index_of(other)]
        for k in np.flatnonzero(~interp):
            for other in lanes.predecessors[k] + lanes.successors[k]:
                assert interp[lanes.index_of(other)]


def test_lane_links_consistent(logs):
    for log in logs.values():
        lanes = log.scene.map.lanes
        for k, lane_id in enumerate(lanes.ids):
            pts = lanes.centerlines[k][:, :2]
            for s in lanes.successors[k]:
                j = lanes.index_of(s)
                assert lane_id in lanes.predecessors[j]
                np.testing.assert_allclose(lanes.centerlines[j][0, :2], pts[-1], atol=1e-6)
            for p in lanes.predecessors[k]:
                assert lane_id in lanes.successors[lanes.index_of(p)]
            mid = pts[len(pts) // 2]
            direction = pts[min(len(pts) // 2 + 1, len(pts) - 1)] - pts[max(len(pts) // 2 - 1, 0)]
            direction /= np.linalg.norm(direction)
            for side, others in ((1.0, lanes.left_neighbors[k]), (-1.0, lanes.right_neighbors[k])):
                for o in others:
                    j = lanes.index_of(o)
                    assert lane_id in (lanes.right_neighbors[j] if side > 0 else lanes.left_neighbors[j])
                    other = lanes.centerlines[j][:, :2]
                    q = other[np.argmin(np.linalg.norm(other - mid, axis=1))]
                    offset = direction[0] * (q - mid)[1] - direction[1] * (q - mid)[0]
                    assert side * offset == pytest.approx(0.5 * (lanes.width[k] + lanes.width[j]), abs=0.1)
                    i = np.argmin(np.linalg.norm(other - mid, axis=1))
                    d_other = other[min(i + 1, len(other) - 1)] - other[max(i - 1, 0)]
                    assert d_other @ direction > 0.95 * np.linalg.norm(d_other)  # Same direction.


def test_drivable_area_covers_lanes(logs):
    for log in logs.values():
        m = log.scene.map
        area = m.drivable_polygon.buffer(0.05)
        lanes = m.lanes
        strips = [
            shapely.LineString(lanes.centerlines[k][:, :2]).buffer(0.5 * float(lanes.width[k]), cap_style="flat")
            for k in range(len(lanes))
        ]
        assert shapely.contains(area, strips).all()
        # Crosswalks lie on the road too.
        assert shapely.contains(area, m.crosswalks.polygons()).all()


def test_road_edges_bound_drivable_area(logs):
    for log in logs.values():
        m = log.scene.map
        boundary = m.drivable_polygon.boundary
        edges = shapely.MultiLineString([e[:, :2] for e in m.road_edges.lines])
        assert shapely.hausdorff_distance(edges, edges.intersection(boundary.buffer(0.01))) < 0.05
        # Only the open ends of roads leaving the town are not curbs.
        assert edges.length > 0.9 * boundary.length


def test_stop_lines_and_signs(logs):
    for log in logs.values():
        m = log.scene.map
        lanes, lights = m.lanes, log.scene.traffic_lights
        lines = {
            int(i): (seg[:, :2], int(t))
            for i, seg, t in zip(m.stop_lines.ids, m.stop_lines.lines, m.stop_lines.types)
        }
        for lane_id, stop in zip(lights.lane_ids, lights.stop_points):
            k = lanes.index_of(lane_id)
            np.testing.assert_allclose(stop[:2], lanes.centerlines[k][0, :2], atol=1e-9)
            seg, kind = lines[lanes.predecessors[k][0]]
            assert kind == StopLineType.TRAFFIC_LIGHT
            np.testing.assert_allclose(seg.mean(axis=0), stop[:2], atol=1e-6)
        signed = {int(c) for ids in m.stop_signs.lane_ids for c in ids}
        assert signed.isdisjoint(int(i) for i in lights.lane_ids)
        for c in signed:
            k = lanes.index_of(c)
            assert lanes.interpolating[k]
            assert lines[lanes.predecessors[k][0]][1] == StopLineType.STOP_SIGN
        # Every connector is controlled by a light or a stop sign.
        controlled = signed | {int(i) for i in lights.lane_ids}
        assert controlled == {int(i) for i in lanes.ids[lanes.interpolating]}


# ----------------------------------------------------------------------------------------------
# Traffic lights.
# ----------------------------------------------------------------------------------------------


def _conflicting_light_pairs(scene: Scene) -> list[tuple[int, int]]:
    """Pairs of light rows whose connectors cross or merge (diverging from one lane is fine)."""
    lanes, lights = scene.map.lanes, scene.traffic_lights
    rows = [lanes.index_of(i) for i in lights.lane_ids]
    lines = np.array([shapely.LineString(lanes.centerlines[k][:, :2]) for k in rows])
    pairs = []
    for a, b in shapely.STRtree(lines).query(lines, predicate="intersects").T:
        if a >= b:
            continue
        ka, kb = rows[a], rows[b]
        if lanes.successors[ka] == lanes.successors[kb] or lanes.predecessors[ka] != lanes.predecessors[kb]:
            pairs.append((int(a), int(b)))
    return pairs


def test_lights_one_per_signalized_connector(logs):
    for log in logs.values():
        scene = log.scene
        lanes, lights = scene.map.lanes, scene.traffic_lights
        assert len(lights) > 0
        assert lights.valid.all()
        assert np.isin(lights.states, [LightState.GO, LightState.CAUTION, LightState.STOP]).all()
        assert all(lanes.interpolating[lanes.index_of(i)] for i in lights.lane_ids)


def test_conflicting_movements_never_green_together(logs, light_log):
    for log in (*logs.values(), light_log):
        states = log.scene.traffic_lights.states
        pairs = _conflicting_light_pairs(log.scene)
        assert pairs
        green = np.isin(states, GREEN)
        for a, b in pairs:
            assert not (green[a] & green[b]).any(), (a, b)


def test_light_phases_cycle(light_log):
    states = light_log.scene.traffic_lights.states
    # Over two minutes every movement gets green; green is always followed by yellow, and
    # yellow by red (>= 3 s of yellow).
    assert (states == LightState.GO).any(axis=1).all()
    prev, cur = states[:, :-1], states[:, 1:]
    changed = prev != cur
    assert np.all(cur[changed & (prev == LightState.GO)] == LightState.CAUTION)
    assert np.all(cur[changed & (prev == LightState.CAUTION)] == LightState.STOP)
    assert np.all(cur[changed & (prev == LightState.STOP)] == LightState.GO)
    for row in states:
        starts = np.flatnonzero(np.diff((row == LightState.CAUTION).astype(int)) == 1)
        for s in starts[:-1]:
            assert np.all(row[s + 1 : s + 31] == LightState.CAUTION)


# ----------------------------------------------------------------------------------------------
# Agents.
# ----------------------------------------------------------------------------------------------


def test_agent_types_and_boxes(logs):
    for log in logs.values():
        tr = log.scene.tracks
        v = tr.valid
        types = set(int(t) for t in tr.types)
        assert {AgentType.VEHICLE, AgentType.PEDESTRIAN} <= types
        assert types <= {AgentType.VEHICLE, AgentType.PEDESTRIAN, AgentType.CYCLIST}
        for kind, lo, hi in (
            (AgentType.VEHICLE, (4.0, 1.7, 1.3), (6.0, 2.4, 2.2)),
            (AgentType.PEDESTRIAN, (0.4, 0.4, 1.5), (0.8, 0.8, 2.0)),
            (AgentType.CYCLIST, (1.5, 0.5, 1.5), (2.0, 0.9, 1.9)),
        ):
            rows = tr.types == kind
            mask = v & rows[:, None]
            for size, a, b in zip((tr.length, tr.width, tr.height), lo, hi):
                assert np.all((size[mask] >= a) & (size[mask] <= b)), kind
        np.testing.assert_allclose(tr.z[v], 0.5 * tr.height[v], atol=1e-6)
        median_length = np.array([np.median(tr.length[i][v[i]]) for i in range(tr.num_agents)])
        expected = np.where(tr.types == AgentType.VEHICLE, REAR_AXLE_RATIO * median_length, 0.0)
        np.testing.assert_allclose(tr.rear_axle_offset, expected, atol=1e-5)
        for name in ("x", "y", "z", "heading", "vx", "vy", "length"):
            assert np.all(getattr(tr, name)[~v] == 0), name


def test_parked_vehicles_static_on_the_road(logs):
    found = 0
    for log in logs.values():
        tr = log.scene.tracks
        area = log.scene.map.drivable_polygon.buffer(0.05)
        parked = (tr.types == AgentType.VEHICLE) & tr.valid.all(axis=1) & (tr.speed.max(axis=1) == 0)
        parked[log.scene.ego_index] = False
        found += int(parked.sum())
        for i in np.flatnonzero(parked):
            assert np.ptp(tr.x[i]) == 0 and np.ptp(tr.y[i]) == 0
            assert shapely.contains(area, shapely.Polygon(tr.corners_2d(0)[i]))
    assert found > 0


def test_velocities_are_finite_differences_and_rear_axles_move_along_the_heading(logs):
    for log in logs.values():
        tr = log.scene.tracks
        both = tr.valid[:, :-2] & tr.valid[:, 1:-1] & tr.valid[:, 2:]
        for pos, vel in ((tr.x, tr.vx), (tr.y, tr.vy)):
            central = (pos[:, 2:] - pos[:, :-2]) / 0.2
            np.testing.assert_allclose(vel[:, 1:-1][both], central[both], atol=1e-9)
        # Vehicles move like kinematic bicycles: the rear axle's velocity points along the
        # heading (the box centre slips sideways in turns); pedestrians along their motion.
        off = tr.rear_axle_offset[:, None]
        rx, ry = tr.x - off * np.cos(tr.heading), tr.y - off * np.sin(tr.heading)
        rvx = np.zeros_like(rx)
        rvy = np.zeros_like(ry)
        rvx[:, 1:-1], rvy[:, 1:-1] = (rx[:, 2:] - rx[:, :-2]) / 0.2, (ry[:, 2:] - ry[:, :-2]) / 0.2
        inner = np.zeros_like(tr.valid)
        inner[:, 1:-1] = both
        moving = inner & (np.hypot(rvx, rvy) > 1.0) & (tr.types != AgentType.PEDESTRIAN)[:, None]
        diff = np.angle(np.exp(1j * (np.arctan2(rvy, rvx) - tr.heading)))
        assert moving.any() and np.abs(diff[moving]).max() < 0.05


def test_vehicles_on_the_road_and_pedestrians_off_it_but_on_crosswalks(logs):
    for log in logs.values():
        scene = log.scene
        tr, m = scene.tracks, scene.map
        area = m.drivable_polygon
        roadway = area.buffer(-0.3)  # Pedestrians may brush the curb.
        crosswalks = shapely.union_all(m.crosswalks.polygons()).buffer(0.3)
        xy = tr.xy
        veh = tr.valid & (tr.types != AgentType.PEDESTRIAN)[:, None]
        assert shapely.contains_xy(area, xy[veh][:, 0], xy[veh][:, 1]).all()
        ped = tr.valid & (tr.types == AgentType.PEDESTRIAN)[:, None]
        px, py = xy[ped][:, 0], xy[ped][:, 1]
        on_road = shapely.contains_xy(roadway, px, py)
        assert shapely.contains_xy(crosswalks, px[on_road], py[on_road]).all()
        assert on_road.any()  # Someone crosses.


# ----------------------------------------------------------------------------------------------
# The expert.
# ----------------------------------------------------------------------------------------------


def test_expert_never_collides(logs):
    for log in logs.values():
        scene = log.scene
        tr, e = scene.tracks, scene.ego_index
        boxes = shapely.polygons(tr.corners_2d())  # (N, T)
        for t in range(scene.num_steps):
            others = np.flatnonzero(tr.valid[:, t])
            others = others[others != e]
            overlap = shapely.area(shapely.intersection(boxes[others, t], boxes[e, t]))
            assert overlap.max(initial=0.0) < 1e-9, (scene.source, t, tr.ids[others[np.argmax(overlap)]])


def test_background_traffic_does_not_collide(logs):
    """No two agents overlap (pedestrians may brush each other on a crowded corner)."""
    for log in logs.values():
        tr = log.scene.tracks
        boxes = shapely.polygons(tr.corners_2d())
        for t in range(0, log.scene.num_steps, 2):
            rows = np.flatnonzero(tr.valid[:, t])
            a, b = shapely.STRtree(boxes[rows, t]).query(boxes[rows, t], predicate="intersects")
            pairs = (a < b) & ~((tr.types[rows[a]] == AgentType.PEDESTRIAN) & (tr.types[rows[b]] == AgentType.PEDESTRIAN))
            i, j = rows[a[pairs]], rows[b[pairs]]
            overlap = shapely.area(shapely.intersection(boxes[i, t], boxes[j, t]))
            assert overlap.max(initial=0.0) < 1e-6, (log.scene.source, t)


def test_expert_stays_in_the_drivable_area(logs):
    for log in logs.values():
        scene = log.scene
        corners = scene.tracks.corners_2d()[scene.ego_index].reshape(-1, 2)
        area = scene.map.drivable_polygon.buffer(1e-6)
        assert shapely.contains_xy(area, corners[:, 0], corners[:, 1]).all(), scene.source


def test_expert_follows_its_route_within_speed_limits(logs):
    for log in logs.values():
        scene = log.scene
        e, lanes = scene.ego_index, scene.map.lanes
        assert log.on_lane[e].all()
        visited = [int(i) for k, i in enumerate(log.lane_ids[e]) if k == 0 or i != log.lane_ids[e, k - 1]]
        start = log.ego_route.index(visited[0])
        assert list(log.ego_route[start : start + len(visited)]) == visited
        limit = lanes.speed_limit[[lanes.index_of(i) for i in log.lane_ids[e]]]
        assert np.all(scene.tracks.speed[e] <= limit + 0.1), scene.source


def test_expert_never_enters_on_red(logs):
    entries = 0
    for log in logs.values():
        scene = log.scene
        tr, e, lanes, lights = scene.tracks, scene.ego_index, scene.map.lanes, scene.traffic_lights
        h, half = tr.heading[e], 0.5 * tr.length[e]
        front = np.stack([tr.x[e] + half * np.cos(h), tr.y[e] + half * np.sin(h)], axis=1)
        light_row = {int(i): r for r, i in enumerate(lights.lane_ids)}
        # Visited lanes as (lane id, first step, last step) of the box centre.
        ids = log.lane_ids[e]
        cuts = np.flatnonzero(np.diff(ids)) + 1
        starts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts - 1, [len(ids) - 1]])
        visits = [(int(ids[s]), int(s), int(t)) for s, t in zip(starts, ends)]
        for (_, first, _), (lane_id, _, last) in zip(visits[:-1], visits[1:]):
            if lane_id not in light_row:
                continue
            pts = lanes.centerlines[lanes.index_of(lane_id)][:, :2]
            d = (pts[1] - pts[0]) / np.linalg.norm(pts[1] - pts[0])
            along = (front[first : last + 1] - pts[0]) @ d
            # The step the front bumper crosses the stop line into the connector it takes.
            for t in first + 1 + np.flatnonzero((along[:-1] < 0) & (along[1:] >= 0)):
                entries += 1
                assert lights.states[light_row[lane_id], t] != LightState.STOP, (scene.source, lane_id, int(t))
    assert entries > 0  # The check was exercised.


def test_expert_stops_at_stop_signs():
    checked = 0
    for seed in (10, 12):  # Seeds whose expert approaches an all-way stop during the log.
        log = generate_log(seed)
        scene = log.scene
        tr, e, lanes = scene.tracks, scene.ego_index, scene.map.lanes
        signed = {int(c) for ids in scene.map.stop_signs.lane_ids for c in ids}
        h, half = tr.heading[e], 0.5 * tr.length[e]
        front = np.stack([tr.x[e] + half * np.cos(h), tr.y[e] + half * np.sin(h)], axis=1)
        ids = log.lane_ids[e]
        for c in np.flatnonzero(np.diff(ids)) + 1:
            if int(ids[c]) not in signed:
                continue
            pts = lanes.centerlines[lanes.index_of(int(ids[c]))][:, :2]
            d = (pts[1] - pts[0]) / np.linalg.norm(pts[1] - pts[0])
            along = (front[:c] - pts[0]) @ d  # Front bumper relative to the stop line [m].
            if along.min() > -6.0:
                continue  # Approached before the log started.
            checked += 1
            near = along > -4.0
            assert tr.speed[e, :c][near].min() < 0.15, (scene.source, int(ids[c]))
    assert checked > 0


def test_expert_speed_is_plausible(logs):
    for log in logs.values():
        tr, e = log.scene.tracks, log.scene.ego_index
        speed = tr.speed[e]
        accel = np.diff(speed) / 0.1
        assert speed.max() > 2.0  # It drives.
        assert np.all(np.abs(accel) < 8.5)
        assert math.isfinite(float(speed.mean()))


def test_synthetic_ranges_name_towns_apart_from_the_first_n():
    from rap.sources.registry import list_units, synthetic_seeds

    assert synthetic_seeds("synthetic:3") == [0, 1, 2]
    assert synthetic_seeds("synthetic:500-502") == [500, 501, 502]
    units = list_units("synthetic:500-501")
    assert [(u.index, u.record) for u in units] == [(0, 500), (1, 501)]  # shard names by index, towns by seed
    for bad in ("synthetic:0", "synthetic:5-3", "synthetic:a", "synthetic:-3", "synthetic:1-"):
        with pytest.raises(ValueError, match="expected synthetic:N .* or synthetic:A-B"):
            list_units(bad)
