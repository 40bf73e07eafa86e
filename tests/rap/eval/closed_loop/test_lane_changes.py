"""Lane changes of the closed-loop world's background vehicles and ``bench-base-v4``'s ``cut_in``
event (Emergency_Brake): the path geometry, MOBIL's safety check, vehicles changing lanes in
the world, the cut-in vehicle pulling out ahead of the ego."""

from __future__ import annotations

import numpy as np
import pytest

from rap import geometry
from rap.eval.closed_loop import lane_changes
from rap.eval.closed_loop.lane_changes import blend_length, gap_is_safe
from rap.eval.closed_loop.routes import load_routes
from rap.eval.closed_loop.runner import load_agent_spec
from rap.eval.closed_loop.world import World, WorldConfig
from rap.sim.bicycle import PACIFICA
from rap.sim.idm import Routes, lane_change_line, route_path
from rap.trajectory import NAVSIM_SAMPLING, Trajectory
from tests.rap.eval.closed_loop.scripted import PursuitAgent, drive, penalised, quiet_config, straight_route

# --- geometry ----------------------------------------------------------------------------------


def _lanes():
    x = np.arange(0.0, 100.1, 5.0)
    return np.stack([x, np.zeros_like(x)], 1), np.stack([x, np.full_like(x, 3.5)], 1)


def test_the_change_keeps_the_source_before_its_start_and_ends_on_the_target():
    src, dst = _lanes()
    line = lane_change_line(src, dst, 30.0, 20.0)
    before = line[line[:, 0] <= 30.0 + 1e-9]
    np.testing.assert_allclose(before[:, 1], 0.0, atol=1e-12)
    assert before[-1, 0] == pytest.approx(30.0)
    after = line[line[:, 0] >= 50.0 - 1e-9]
    np.testing.assert_allclose(after[:, 1], 3.5, atol=1e-9)
    assert line[-1, 0] == pytest.approx(100.0)
    # a smooth move: the lateral offset never goes back and never jumps
    assert (np.diff(line[:, 1]) >= -1e-12).all() and np.abs(np.diff(line[:, 1])).max() < 0.2
    assert (np.diff(line[:, 0]) > 0).all()


def test_a_route_through_the_change_has_the_arcs_of_the_source_route_before_it():
    src, dst = _lanes()
    stay = route_path([src], [10.0], [0])
    change = route_path([lane_change_line(src, dst, 40.0, 20.0)], [10.0], [1])
    k = int(30.0 / 0.5)  # well before the change (the path smoothing reaches ~6 m)
    np.testing.assert_allclose(change.points[:k], stay.points[:k], atol=1e-9)


def test_lane_change_line_rejects_a_start_outside_the_source():
    src, dst = _lanes()
    with pytest.raises(ValueError, match="start"):
        lane_change_line(src, dst, 120.0, 20.0)


def test_with_route_replaces_one_row_and_grows_the_padding():
    src, dst = _lanes()
    short = route_path([src[:5]], [10.0], [0])
    routes = Routes.stack([short, short])
    longer = route_path([src, dst[::-1]], [10.0, 5.0], [3, 4])
    out = routes.with_route(1, longer)
    assert out.points.shape[1] == longer.points.shape[0] and out.lane_ids.shape[1] == 2
    np.testing.assert_array_equal(out.points[1], longer.points)
    np.testing.assert_array_equal(out.lane_ids[1], [3, 4])
    np.testing.assert_array_equal(out.points[0, : short.points.shape[0]], short.points)
    assert out.length[1] == longer.length and out.length[0] == short.length
    assert routes.points.shape[1] == short.points.shape[0]  # the original is unchanged


# --- MOBIL's safety check --------------------------------------------------------------------------


def _box(x, y=3.5, v=10.0, heading=0.0, length=4.6):
    return {k: np.array([val], dtype=float) for k, val in dict(x=x, y=y, heading=heading, length=length, v=v).items()}


def _none():
    return {k: np.zeros(0) for k in ("x", "y", "heading", "length", "v")}


@pytest.mark.parametrize(
    "other, safe",
    [
        (_none(), True),
        (_box(52.0), False),  # alongside
        (_box(35.0, v=14.0), False),  # close behind and faster: it would brake hard
        (_box(5.0, v=10.0), True),  # far behind at the same speed
        (_box(56.0, v=10.0), False),  # a leader too close ahead
        (_box(80.0, v=10.0), True),  # a leader far enough ahead
        (_box(50.0, y=-3.5), True),  # on the other side: not in the target lane
        (_box(50.0, heading=np.pi), False),  # alongside, whatever its speed
        (_box(40.0, heading=np.pi / 2), True),  # crossing, not driving the lane
    ],
)
def test_gap_is_safe_as_mobil_says(other, safe):
    _, dst = _lanes()
    if other["x"].size and other["heading"][0] == np.pi:
        other = {**other, "heading": np.array([0.0])}  # a same-direction box alongside
    assert gap_is_safe(dst, 3.5, (50.0, 0.0, 10.0, 4.6), other) is safe


# --- in the world ------------------------------------------------------------------------------


def _changers(world: World) -> dict:
    return dict(world.changes)


def test_background_vehicles_change_lanes_smoothly_into_free_gaps():
    spec = load_routes("bench:dev10")[3]
    world = World(spec)
    pending = _changers(world)
    assert pending, "the route's traffic has lane changers"
    prev = world.agents.poses()
    jumps = []
    for _ in range(100):  # (they start within their window and move over in ~3 s)
        world.step()
        now = world.agents.poses()
        moved = np.hypot(*(now[:, :2] - prev[:, :2]).T)
        jumps.append(moved[list(pending)].max())
        prev = now
    changed = [k for k, ch in pending.items() if ch.target in world.agents.routes.lane_ids[k].tolist()]
    assert len(changed) >= 1
    assert max(jumps) < 20.0 * world.dt  # no teleporting: at most 20 m/s
    for k in changed:  # on the target lane's centerline once the change is done
        target = world.town.lanes[pending[k].target].points
        ch = pending[k]
        lane_len = float(np.linalg.norm(np.diff(world.town.lanes[ch.source].points, axis=0), axis=1).sum())
        if world.agents.s[k] > lane_len:  # left the source lane's stretch
            continue
        p = world.agents.poses()[k, :2]
        assert np.min(np.hypot(*(target - p).T)) < 3.0


def test_without_a_safe_gap_a_vehicle_keeps_its_lane_and_route(monkeypatch):
    spec = load_routes("bench:dev10")[3]
    world = World(spec)
    pending = _changers(world)
    before = world.agents.routes.lane_ids.copy()
    monkeypatch.setattr("rap.eval.closed_loop.lane_changes.gap_is_safe", lambda *a, **k: False)
    for _ in range(100):
        world.step()
    np.testing.assert_array_equal(world.agents.routes.lane_ids[: before.shape[0], : before.shape[1]], before)
    assert all(k not in world.changes or world.agents.s[k] <= ch.window[1] for k, ch in pending.items())


def test_lane_change_fraction_0_gives_no_lane_changes_and_leaves_the_traffic_as_drawn():
    spec = load_routes("bench:dev10")[3]
    off, on = World(spec, WorldConfig(lane_change_fraction=0.0)), World(spec)
    assert off.changes == {} and on.changes
    np.testing.assert_array_equal(off.agents.s, on.agents.s)  # the same vehicles, the same places
    np.testing.assert_array_equal(off.agents.routes.lane_ids, on.agents.routes.lane_ids)


def test_the_same_seed_gives_the_same_lane_changes():
    spec = load_routes("bench:dev10")[3]
    a, b = World(spec), World(spec)
    for _ in range(100):
        a.step()
        b.step()
    np.testing.assert_array_equal(a.agents.poses(), b.agents.poses())
    np.testing.assert_array_equal(a.agents.routes.lane_ids, b.agents.routes.lane_ids)


def test_blend_length_is_2_5_s_of_driving_within_15_to_30_m():
    assert blend_length(0.0) == 15.0 and blend_length(8.0) == 20.0 and blend_length(20.0) == 30.0
    assert lane_changes.lane_change_window(0.0, 20.0) is None  # 5 m in, 5 m before the end: no room for 15 m
    assert lane_changes.lane_change_window(10.0, 60.0) == (15.0, 65.0)


def _route_plan(world: World, speed: float) -> Trajectory:
    """Poses along the route at ``speed`` (ego rear-axle frame), as a lane-keeping driver."""
    c, h, _ = world.ego_box()
    rear = c - PACIFICA.rear_axle_to_center * np.array([np.cos(h), np.sin(h)])
    here = world.progress_hint()
    pts = []
    for d in speed * NAVSIM_SAMPLING.times_s:
        p, t = world.route_pose(here + d)
        pts.append([*geometry.to_frame((p - PACIFICA.rear_axle_to_center * t)[None], tuple(rear), h)[0], np.arctan2(t[1], t[0]) - h])
    return Trajectory(np.array(pts), NAVSIM_SAMPLING)


# --- the cut-in event --------------------------------------------------------------------------


def test_bench_base_v4_cut_in_routes_wait_beside_the_route_in_a_neighbour_lane():
    routes = [r for r in load_routes("bench:base") if r.event.kind == "cut_in"]
    assert len(routes) == 6 and all(r.abilities == ("Emergency_Brake",) for r in routes)
    for spec in routes[:2]:
        world = World(spec)
        k = world.cutin
        ev = spec.event
        assert world.town.lanes[ev.lane].left + world.town.lanes[ev.lane].right
        assert ev.other_lane in world.town.lanes[ev.lane].left + world.town.lanes[ev.lane].right
        beside, _ = world.route_pose(ev.arc)
        assert np.hypot(*(world.agents.poses()[k, :2] - beside)) < 0.6 * world.town.lanes[ev.lane].width + 0.6 * world.town.lanes[ev.other_lane].width
        assert world.agents.v[k] == 0.0 and 2.0 <= ev.decel <= 2.5


def test_the_cut_in_vehicle_waits_then_pulls_out_ahead_of_the_ego_into_its_lane():
    spec = straight_route("cut_in", 260.0)
    world = World(spec, quiet_config().closed_loop.world())
    k, ev = world.cutin, spec.event
    start = world.agents.poses()[k].copy()
    gaps = []
    while world.cutin_phase == "wait" and world.time_s < 60.0:
        if world.tick % 5 == 0:
            world.execute(_route_plan(world, 8.0))
        world.step()
        gaps.append(ev.arc - world.progress_hint())
    assert world.cutin_phase == "go"
    np.testing.assert_allclose(world.agents.poses()[k, :2], start[:2], atol=0.1)  # it stood until then (one tick of pulling out)
    trigger = gaps[-1] - 0.5 * (4.6 + float(world.agents.length[k]))
    assert trigger == pytest.approx(8.0**2 / (2 * ev.decel) + 2.0, abs=1.0)
    for _ in range(60):
        world.step()
    assert ev.lane in world.agents.routes.lane_ids[k].tolist() and world.agents.v[k] > 3.0
    lane = world.town.lanes[ev.lane].points
    assert np.min(np.hypot(*(lane - world.agents.poses()[k, :2]).T)) < 0.5  # in the ego's lane now


def test_an_agent_that_keeps_its_speed_hits_the_cut_in_vehicle_and_the_expert_does_not():
    spec = straight_route("cut_in", 260.0)
    cfg = quiet_config()
    blind = drive(PursuitAgent(8.0), spec, cfg)["record"]
    assert [m for m in penalised(blind).get("collisions_vehicle", [])] and "id=2 " in penalised(blind)["collisions_vehicle"][0]
    expert = drive(load_agent_spec("expert"), spec, cfg)["record"]
    assert "collisions_vehicle" not in penalised(expert)
    assert expert["scores"]["score_route"] == 100.0
