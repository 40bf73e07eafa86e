"""Tests for rap/sim/idm.py: the IDM law, the leader search, routes and reactive agents."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rap.geometry import point_polyline_distance
from rap.scene import (
    AgentTracks,
    AgentType,
    Lanes,
    LaneType,
    MapElements,
    Polylines,
    Scene,
    TrafficLights,
)
from rap.sim.idm import (
    Boxes,
    IDMAgents,
    IDMParameters,
    advance,
    idm_acceleration,
    lane_route,
    locate_on_lanes,
    path_hits,
    route_path,
)

DT = 0.1  # [s]


# ----------------------------------------------------------------------------------------------
# The law.
# ----------------------------------------------------------------------------------------------


def test_free_road_accelerates_to_the_desired_speed_and_not_beyond():
    params = IDMParameters(max_accel=1.5, comfort_decel=2.0, time_headway=1.5, min_gap=2.0)
    s, v = np.zeros(1), np.zeros(1)
    speeds = []
    for _ in range(600):  # 60 s
        acc = idm_acceleration(params, v, np.array([15.0]))
        assert acc[0] <= params.max_accel
        s, v = advance(s, v, acc, DT)
        speeds.append(v[0])
    speeds = np.array(speeds)
    assert np.all(np.diff(speeds) >= 0)  # Monotone approach ...
    assert speeds.max() <= 15.0  # ... never past v0 ...
    assert speeds[-1] > 14.5  # ... and there in the end.
    assert speeds[20] == pytest.approx(1.5 * 2.1, rel=0.05)  # Starts at about a_max.
    # Above v0 it brakes back down.
    assert idm_acceleration(params, np.array([20.0]), np.array([15.0]))[0] < 0


def test_follower_stops_behind_a_stopped_leader_at_the_standstill_gap():
    params = IDMParameters(max_accel=1.5, comfort_decel=2.0, time_headway=1.5, min_gap=2.0, max_decel=8.0)
    leader_rear = 120.0  # [m]
    front, v = np.zeros(1), np.array([15.0])
    gaps = []
    for _ in range(900):
        gap = leader_rear - front
        acc = idm_acceleration(params, v, np.array([15.0]), gap, np.zeros(1))
        front, v = advance(front, v, acc, DT)
        gaps.append(leader_rear - front[0])
    assert min(gaps) > 0  # Never touches the leader.
    assert v[0] < 0.05
    assert gaps[-1] == pytest.approx(2.0, abs=0.3)


def test_overlap_and_stop_points_brake_hard():
    params = IDMParameters(max_decel=6.0)
    v, v0 = np.array([10.0, 10.0]), np.array([10.0, 10.0])
    acc = idm_acceleration(params, v, v0, np.array([0.0, -1.0]))
    np.testing.assert_array_equal(acc, [-6.0, -6.0])
    # A stop point counts like a standstill leader (with its own standstill gap).
    free = idm_acceleration(params, v, v0)
    stop = idm_acceleration(params, v, v0, stop_gap=np.array([30.0, np.inf]))
    assert stop[0] < free[0] and stop[1] == free[1]
    # The ceiling caps before the clip.
    assert idm_acceleration(params, v, v0, ceiling=np.array([-1.0, -100.0])).tolist() == [-1.0, -6.0]


def test_vectorized_law_equals_per_agent_calls():
    rng = np.random.default_rng(0)
    n = 50
    a, b, t, s0 = rng.uniform(1, 3, n), rng.uniform(1, 3, n), rng.uniform(0.8, 2, n), rng.uniform(1, 3, n)
    v, v0 = rng.uniform(0, 20, n), rng.uniform(5, 20, n)
    gap = np.where(rng.random(n) < 0.3, np.inf, rng.uniform(-1, 60, n))
    lead = rng.uniform(0, 20, n)
    stop = np.where(rng.random(n) < 0.5, np.inf, rng.uniform(0.1, 60, n))
    batch = idm_acceleration(
        IDMParameters(max_accel=a, comfort_decel=b, time_headway=t, min_gap=s0), v, v0, gap, lead, stop_gap=stop
    )
    for i in range(n):
        one = idm_acceleration(
            IDMParameters(max_accel=a[i], comfort_decel=b[i], time_headway=t[i], min_gap=s0[i]),
            v[i : i + 1], v0[i : i + 1], gap[i : i + 1], lead[i : i + 1], stop_gap=stop[i : i + 1],
        )  # fmt: skip
        assert one[0] == batch[i]


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="IDMParameters.min_gap"):
        IDMParameters(min_gap=0.0)
    with pytest.raises(ValueError, match="IDMParameters.max_accel"):
        IDMParameters(max_accel=np.array([1.0, -1.0]))


# ----------------------------------------------------------------------------------------------
# Leaders along a path.
# ----------------------------------------------------------------------------------------------


def _straight(k: int = 60) -> tuple[np.ndarray, np.ndarray]:
    pts = np.stack([np.arange(k, dtype=float), np.zeros(k)], -1)
    return pts, np.tile([1.0, 0.0], (k, 1))


def test_leader_is_the_first_box_on_the_path_with_its_speed_along_it():
    pts, tan = _straight()
    boxes = Boxes.from_poses(
        x=[30.0, 12.0, 20.0, 8.0], y=[0.0, 0.5, 4.0, -1.9], heading=[0.0, np.pi, 0.0, 0.0],
        length=[4.0, 4.0, 4.0, 4.0], width=[2.0, 2.0, 2.0, 2.0], vx=[5.0, -3.0, 9.0, 1.0],
    )  # fmt: skip
    # Box 2 is 3 m beside the path; box 3 0.9 m beside it: within a 1.25 m clearance from its
    # rear (at 6 m; the corner 1 m earlier is sqrt(1 + 0.81) m away), out of a 0.5 m one.
    wide = path_hits(pts, tan, boxes, clearance=1.25).nearest(1)
    assert (wide.sample[0], wide.obstacle[0]) == (6, 3)  # 8 - 2 (half length) = 6 m.
    narrow = path_hits(pts, tan, boxes, clearance=0.5).nearest(1)
    assert (narrow.sample[0], narrow.obstacle[0]) == (10, 1)  # Oncoming at 12 m: speed along 0.
    assert narrow.speed[0] == 0.0
    inside = path_hits(pts, tan, dataclasses.replace(boxes, valid=np.array([True, False, True, True]))).nearest(1)
    assert (inside.sample[0], inside.obstacle[0], inside.speed[0]) == (28, 0, 5.0)
    # Samples past the path's end (sample_valid) and excluded boxes do not count.
    ok = np.arange(60) < 25
    none = path_hits(pts, tan, boxes, clearance=0.5, sample_valid=ok, exclude=np.array([1])).nearest(1)
    assert none.sample[0] == -1 and none.obstacle[0] == -1


def test_batched_search_equals_per_row_search():
    rng = np.random.default_rng(1)
    b, k, n = 12, 40, 30
    heading = rng.uniform(-0.3, 0.3, b)
    pts = rng.uniform(-20, 20, (b, 1, 2)) + np.arange(k)[None, :, None] * np.stack([np.cos(heading), np.sin(heading)], -1)[:, None]
    tan = np.broadcast_to(np.stack([np.cos(heading), np.sin(heading)], -1)[:, None], (b, k, 2))
    boxes = Boxes(
        centre=rng.uniform(-20, 60, (n, 2)), axis=np.stack([np.cos(h := rng.uniform(-3, 3, n)), np.sin(h)], -1),
        half_length=rng.uniform(0.3, 3, n), half_width=rng.uniform(0.3, 1.2, n), speed=rng.uniform(0, 10, n),
    )  # fmt: skip
    clearance = rng.uniform(0.5, 1.5, b)
    ok = rng.random((b, k)) < 0.9
    batch = path_hits(pts, tan, boxes, clearance, sample_valid=ok).nearest(b)
    assert (batch.sample >= 0).sum() >= 3  # The case is not trivial.
    for i in range(b):
        one = path_hits(pts[i], tan[i], boxes, clearance[i], sample_valid=ok[i]).nearest(1)
        assert (one.sample[0], one.obstacle[0], one.speed[0]) == (batch.sample[i], batch.obstacle[i], batch.speed[i])
        # The pruning is exact: every box against every sample by brute force agrees.
        rel = pts[i][:, None] - boxes.centre[None]
        lx = np.abs((rel * boxes.axis[None]).sum(-1)) - boxes.half_length
        ly = np.abs(rel[..., 1] * boxes.axis[None, :, 0] - rel[..., 0] * boxes.axis[None, :, 1]) - boxes.half_width
        hit = (np.maximum(lx, 0) ** 2 + np.maximum(ly, 0) ** 2 < clearance[i] ** 2) & ok[i][:, None]
        rows = np.flatnonzero(hit.any(axis=1))
        assert one.sample[0] == (rows[0] if rows.size else -1)


def test_mutual_sightings_let_the_nearer_agent_go_first():
    # Row 0's path runs into box 1 after 5 m; row 1's path into box 0 after 10 m.
    pts = np.stack([_straight()[0], _straight()[0] + [0.0, 10.0]])
    tan = np.tile([1.0, 0.0], (2, 60, 1))
    boxes = Boxes(
        centre=np.array([[12.0, 10.0], [7.0, 0.0]]), axis=np.array([[1.0, 0.0], [1.0, 0.0]]),
        half_length=np.array([2.0, 2.0]), half_width=np.array([1.0, 1.0]), speed=np.zeros(2),
    )  # fmt: skip
    hits = path_hits(pts, tan, boxes, 0.5, exclude=np.array([0, 1]))
    assert list(zip(hits.row.tolist(), hits.obstacle.tolist(), hits.sample.tolist())) == [(0, 1, 5), (1, 0, 10)]
    lead = hits.yield_mutual().nearest(2)
    assert lead.sample.tolist() == [-1, 10]  # Row 0, nearer the conflict, goes first.
    # Without the sighting being mutual, both brake.
    assert path_hits(pts, tan, boxes, 0.5).yield_mutual().nearest(2).sample.tolist() == [5, 10]


# ----------------------------------------------------------------------------------------------
# Reactive agents on a hand-built scene.
# ----------------------------------------------------------------------------------------------


def _lane_map(turn_radius: float = 20.0, successors: tuple[int, ...] = (2, 3)) -> MapElements:
    """Lane 1: x 0 -> 60 m along y = 0; lane 2 (a straight successor): x 60 -> 160 m;
    lane 3 (a left successor): a quarter turn of ``turn_radius`` from (60, 0), then north."""
    a = np.linspace(0.0, np.pi / 2, 16)
    turn = np.stack([60.0 + turn_radius * np.sin(a), turn_radius * (1 - np.cos(a))], -1)
    turn = np.concatenate([turn, turn[-1] + np.stack([np.zeros(5), np.linspace(5, 80, 5)], -1)])
    lines = [np.array([[0.0, 0.0], [30.0, 0.0], [60.0, 0.0]]), np.array([[60.0, 0.0], [160.0, 0.0]]), turn]
    lanes = Lanes(
        ids=np.array([1, 2, 3]),
        centerlines=Polylines.from_list(lines),
        types=np.full(3, LaneType.SURFACE_STREET),
        speed_limit=np.array([12.0, 12.0, 12.0]),
        has_speed_limit=np.array([True, True, False]),
        width=np.full(3, 3.5),
        interpolating=np.zeros(3, bool),
        successors=(successors, (), ()),
        predecessors=((), (1,), (1,)),
        left_neighbors=((), (), ()),
        right_neighbors=((), (), ()),
    )
    return dataclasses.replace(MapElements.empty(), lanes=lanes)


def _scene(xs: list[float], speeds: list[float], ys: list[float] | None = None, **map_args) -> Scene:
    n, t = len(xs) + 1, 2
    x = np.array([[-100.0] * t] + [[xi] * t for xi in xs])  # Row 0: the ego, far behind.
    y = np.zeros((n, t)) if ys is None else np.array([[0.0] * t] + [[yi] * t for yi in ys])
    vx = np.array([[0.0] * t] + [[vi] * t for vi in speeds])
    tracks = AgentTracks(
        ids=np.arange(n), types=np.full(n, AgentType.VEHICLE), x=x, y=y, z=np.full((n, t), 0.8),
        heading=np.zeros((n, t)), vx=vx, vy=np.zeros((n, t)), length=np.full((n, t), 4.5),
        width=np.full((n, t), 1.9), height=np.full((n, t), 1.6), valid=np.ones((n, t), bool),
        rear_axle_offset=np.full(n, 1.3),
    )  # fmt: skip
    return Scene(
        scene_id="idm", source="test", timestamps=np.array([0.0, 0.1]), current_index=0, tracks=tracks,
        ego_index=0, map=_lane_map(**map_args), traffic_lights=TrafficLights.empty(t),
    )  # fmt: skip


def test_locate_and_route_follow_the_lane_graph():
    lanes = _lane_map().lanes
    lane, arc = locate_on_lanes(lanes, np.array([[20.0, 0.5], [20.0, 0.0], [20.0, 5.0]]), np.array([0.0, np.pi, 0.0]))
    assert lane.tolist() == [0, -1, -1]  # Wrong way and off the lane are not matched.
    assert arc[0] == pytest.approx(20.0)
    assert lane_route(lanes, 0, 100.0, 20.0) == [0, 1]  # The straightest successor ...
    picks = {tuple(lane_route(lanes, 0, 100.0, 20.0, np.random.default_rng(s))) for s in range(20)}
    assert picks == {(0, 1), (0, 2)}  # ... or either at random.
    assert lane_route(lanes, 0, 10.0, 20.0) == [0]


@pytest.mark.parametrize("successor", [2, 3])
def test_agent_follows_successors_across_a_lane_boundary(successor):
    scene = _scene([40.0], [8.0], turn_radius=25.0, successors=(successor,))
    agents = IDMAgents.from_scene(scene, route_length=150.0)
    assert agents.track_index.tolist() == [1]
    nxt = successor - 1  # Lane index.
    lane_xy = scene.map.lanes.centerlines[nxt][:, :2]
    lanes_seen, turn_speeds = [int(agents.lanes()[0])], []
    for _ in range(100):
        agents = agents.step(DT)
        lanes_seen.append(int(agents.lanes()[0]))
        x, y, heading = agents.poses()[0]
        if lanes_seen[-1] == nxt:
            assert point_polyline_distance([[x, y]], lane_xy)[0] < 0.5  # On the successor's centerline.
        if 0.3 < heading < 1.2:
            turn_speeds.append(agents.v[0])
    assert lanes_seen[0] == 0 and lanes_seen[-1] == nxt
    assert np.all(np.diff(lanes_seen) >= 0)  # Lane 0, then the successor for good.
    assert agents.active[0] and agents.v[0] > 10.0  # Back at about the 12 m/s limit.
    if successor == 3:  # Through the turn at most at the curve limit sqrt(2.5 * 25) = 7.9 m/s.
        assert turn_speeds and max(turn_speeds) < 8.0
        assert agents.poses()[0, 2] == pytest.approx(np.pi / 2, abs=0.01)
    else:
        assert not turn_speeds


def test_agents_queue_behind_a_stopped_obstacle_without_overlapping():
    scene = _scene([10.0, 30.0], [12.0, 12.0])
    agents = IDMAgents.from_scene(scene, route_length=200.0)
    wall = Boxes.from_poses(x=[80.0], y=[0.0], heading=[0.0], length=[2.0], width=[3.0])
    for _ in range(300):
        agents = agents.step(DT, wall)
        x = agents.poses()[:, 0]
        order = np.argsort(x)
        rear, front = x[order] - 0.5 * agents.length[order], x[order] + 0.5 * agents.length[order]
        assert np.all(front[:-1] < rear[1:])  # Never overlapping each other ...
        assert front.max() < 79.0  # ... or the wall.
    assert np.all(agents.v < 0.05)
    gaps = np.append(rear[1:] - front[:-1], 79.0 - front[-1])
    # Standstill gap 2 m, the leader found within one 1 m sample (rounded bumper).
    assert np.all((gaps > 1.0) & (gaps < 3.5)), gaps


def test_agents_leave_at_the_end_of_their_route():
    scene = _scene([150.0], [10.0])  # Lane 2 ends at x = 160 m (no successor).
    agents = IDMAgents.from_scene(scene)
    for _ in range(30):
        agents = agents.step(DT)
    assert not agents.active[0] and agents.v[0] == 0.0
    assert not agents.boxes().valid[0]


def test_vectorized_agents_equal_agents_alone():
    scene = _scene([5.0, 45.0, 100.0], [3.0, 11.0, 6.0])
    together = IDMAgents.from_scene(scene)
    alone = [IDMAgents.from_scene(scene, agents=[i]) for i in (1, 2, 3)]
    for _ in range(50):
        others = [
            Boxes.concatenate([a.boxes() for j, a in enumerate(alone) if j != i]) for i in range(3)
        ]  # Each lone agent sees the others' boxes as obstacles.
        alone = [a.step(DT, others[i]) for i, a in enumerate(alone)]
        together = together.step(DT)
        np.testing.assert_array_equal(together.s, np.concatenate([a.s for a in alone]))
        np.testing.assert_array_equal(together.v, np.concatenate([a.v for a in alone]))


def test_route_path_resamples_and_limits_curves():
    lines = [np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[10.0, 0.0], [20.0, 0.0]])]
    path = route_path(lines, [10.0, 5.0], [7, 8], spacing=0.5, smoothing=0.0)
    assert path.lanes == (7, 8) and path.length == 20.0
    np.testing.assert_allclose(path.points[:, 0], np.arange(0.0, 20.01, 0.5))
    assert path.vmax[0] == 10.0 and path.vmax[-1] == 5.0
    np.testing.assert_array_equal(path.lane_starts, [0.0, 10.0])


def test_coarse_to_fine_pruning_equals_testing_every_sample():
    """The pruning stages (the path's bounding circle, then those of its coarse and fine segments,
    at any segment length) find the same contacts as the plain test of every sample against
    every box; rows that share a path through ``path_index`` find what rows with their own copy
    of it find."""
    rng = np.random.default_rng(7)
    b, k, n = 40, 90, 25
    s = np.arange(k, dtype=float)
    curvature = rng.uniform(-0.03, 0.03, b)[:, None]
    h = curvature * s[None] + rng.uniform(-np.pi, np.pi, b)[:, None]
    pts = np.cumsum(np.stack([np.cos(h), np.sin(h)], -1), axis=1) + rng.uniform(-30, 30, (b, 1, 2))
    tan = np.stack([np.cos(h), np.sin(h)], -1)
    centre = pts[:, rng.integers(0, k, n)] + rng.normal(0, 3.0, (b, n, 2))
    hd = rng.uniform(-3, 3, (b, n))
    boxes = Boxes(centre=centre, axis=np.stack([np.cos(hd), np.sin(hd)], -1), half_length=rng.uniform(0.3, 3, (b, n)),
                  half_width=rng.uniform(0.3, 2.0, (b, n)), velocity=rng.normal(0, 5, (b, n, 2)), valid=rng.random((b, n)) < 0.9)  # fmt: skip
    ok = rng.random((b, k)) < 0.95
    # Rows 2 i and 2 i + 1 share path i (as the reference planner's steps share an offset path).
    path_index = np.arange(b) // 2
    for clearance in (None, rng.uniform(0.2, 1.5, b)):
        plain = path_hits(pts, tan, boxes, clearance, sample_valid=ok, stride=1)
        assert plain.row.size > 20  # not a trivial case
        for stride in (2, 3, 4, 7, 30, 200):
            fast = path_hits(pts, tan, boxes, clearance, sample_valid=ok, stride=stride)
            for name in ("row", "obstacle", "sample", "speed"):
                assert np.array_equal(getattr(fast, name), getattr(plain, name)), (stride, name)
        rows = path_hits(pts[path_index], tan[path_index], boxes, clearance, sample_valid=ok)
        by_path = path_hits(pts[: b // 2], tan[: b // 2], boxes, clearance, sample_valid=ok, path_index=path_index)
        assert rows.row.size > 20
        for name in ("row", "obstacle", "sample", "speed"):
            assert np.array_equal(getattr(by_path, name), getattr(rows, name)), name
